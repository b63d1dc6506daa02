"""Generated requests against the server's OpenAPI schema (schemathesis), on a real uvicorn: whatever
the body, the server answers with a 4xx that names the problem or a 2xx, never a 5xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tunesmith.config import load_config

EXAMPLES = 10  # generated cases per operation and phase
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TUNESMITH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "schemathesis"


def test_generated_requests_never_get_a_server_error(tmp_path: Path, tiny_model_dir: Path):
    from tunesmith.pipeline import write_demo_project
    from tunesmith.registry.aliases import promote
    from tunesmith.serve import serve_in_background
    from tunesmith.train.run import train
    from tunesmith.workspace import open_workspace

    config_path = write_demo_project(tmp_path / "p")
    settings = [f"model.id={tiny_model_dir}", "train.method=lora", "train.epochs=1", "train.lr=5e-2"]
    version = train(load_config(config_path, settings)).version
    serving = [
        *settings,
        "serve.auth=none",
        "serve.max_tokens=16",
        "serve.default_max_tokens=8",
        "serve.max_n=2",
    ]
    config = load_config(config_path, serving)
    promote(open_workspace(config), config.registry, version, "production", force=True, reason="test")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = ARTIFACTS / "report.json"
    with serve_in_background(config) as (url, _server):
        run = subprocess.run(
            [
                *(sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"),
                *("--checks", "not_a_server_error", "--phases", "examples,coverage"),
                *("--max-examples", str(EXAMPLES), "--seed", "1", "--workers", "1"),
                *("--generation-database", "none", "--request-timeout", "60", "--no-color"),
                *("--report", "json,ndjson", "--report-json-path", str(report)),
                *("--report-ndjson-path", str(ARTIFACTS / "events.ndjson")),
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=600,
        )
        # what it found, kept as cases: a top_p of 5e-324 is 0 in float32 and left no token to sample,
        # and a temperature of 1e-300 overflowed the logits (both were 500s)
        import httpx2 as httpx

        for extreme in ({"top_p": 5e-324}, {"temperature": 1e-300}, {"temperature": 1e-300, "top_p": 5e-324}):
            body = {"model": "fernwick-support", "prompt": "Hello", "max_tokens": 4, "seed": 3, **extreme}
            answered = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            assert answered.status_code == 200, (extreme, answered.text)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(f"\nschemathesis: {cases['generated']} generated requests, {cases['with_failures']} failing")
    assert summary["operations"]["tested"] >= 14 and cases["generated"] > 300
