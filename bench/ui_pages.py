"""Benchmark: `tunesmith ui` page times on a large store against a small one, side by side.

Two workspaces are filled with store records the way the stages write them: a small one (10
versions, 100 logged requests) and a large one (200 versions of one family, 10,000 logged requests
over the last day with two online scores each, feedback on every 20th, alias moves, runs with
their logged loss). Each app runs under a real uvicorn on 127.0.0.1 and every page is fetched
`--repeat` times after one warm-up fetch.

    .venv/bin/python bench/ui_pages.py [--versions 200] [--requests 10000] [--repeat 7]

Prints the median and p95 time of each page in both workspaces, and the large over the small
(lists are paginated on indexed columns, so the ratio stays near 1 except where a page sums a
time window: monitoring reads every request of the window).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx2 as httpx
from rich.console import Console
from tables import results_table

from tunesmith.config import load_config
from tunesmith.store import schema as db
from tunesmith.store import session
from tunesmith.ui import ui_in_background
from tunesmith.workspace import init_project, open_workspace

console = Console(width=150)
FAMILY = "bench"


def fill(directory: Path, versions: int, requests: int) -> Path:
    """A project whose store holds `versions` versions and `requests` logged requests."""
    config_path = init_project(directory)
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(re.sub(r"(?m)^project: .*$", f"project: {FAMILY}", text), encoding="utf-8")
    workspace = open_workspace(load_config(config_path))
    now = db.utcnow()
    with session(workspace.engine) as s:
        s.add(
            db.DatasetVersion(
                id="ds-bench",
                name="bench",
                content_hash="0" * 64,
                source="bench.jsonl",
                format="chat",
                counts={"train": 800, "val": 100, "test": 100, "rejected": 0},
                path=str(workspace.dataset_dir("ds-bench")),
                meta={},
            )
        )
        for n in range(1, versions + 1):
            run_id = f"run-bench-{n:04d}"
            s.add(
                db.Run(
                    id=run_id,
                    kind="train",
                    status="finished",
                    project=FAMILY,
                    config={"train": {"method": "lora", "seed": n}},
                    dataset_version_id="ds-bench",
                    base_model="smollm2-135m-instruct",
                    metrics={"train_loss": 1.0 / n, "eval_loss": 1.2 / n, "tokens_per_second": 190.0},
                    path=str(workspace.run_dir(run_id)),
                    started_at=now - timedelta(hours=versions - n + 1),
                    finished_at=now - timedelta(hours=versions - n),
                )
            )
            s.add_all(
                db.RunMetric(run_id=run_id, step=step, epoch=step / 20, name="loss", value=2.0 / step)
                for step in range(1, 41)
            )
            s.flush()  # the version's row names the run's (no ORM relationship orders the two)
            s.add(
                db.ModelVersion(
                    id=f"mv-bench{n:05d}",
                    name=f"{FAMILY}-v{n}",
                    family=FAMILY,
                    number=n,
                    run_id=run_id,
                    base_model="smollm2-135m-instruct",
                    method="lora",
                    weights_sha256="0" * 64,
                    dataset_version_id="ds-bench",
                    seed=n,
                    config={"train": {"method": "lora", "seed": n}},
                    metrics={"eval_loss": 1.2 / n},
                    lineage={},
                    path=str(workspace.root / "versions" / str(n)),
                    created_by="bench",
                    created_at=now - timedelta(hours=versions - n),
                )
            )
        s.flush()
        for n in range(2, versions + 1):
            s.add(
                db.AliasEvent(
                    family=FAMILY,
                    alias="production",
                    from_version_id=f"mv-bench{n - 1:05d}",
                    to_version_id=f"mv-bench{n:05d}",
                    actor="bench",
                    reason="",
                    action="promote",
                    forced=True,
                    at=now - timedelta(hours=versions - n),
                )
            )
        for i in range(requests):
            version = f"mv-bench{versions - (i % 2):05d}"  # production and the one before (a canary)
            at = now - timedelta(seconds=86_000 * (requests - i) / requests)
            request_id = f"req-bench{i:08d}"
            s.add(
                db.RequestLog(
                    id=request_id,
                    at=at,
                    endpoint="chat",
                    requested_model=FAMILY,
                    version_id=version,
                    route="primary" if i % 2 == 0 else "canary",
                    prompt=[{"role": "user", "content": f"question {i}"}],
                    output=[f"answer {i}"],
                    finish_reasons=["stop"],
                    params={"max_tokens": 64},
                    status=200 if i % 97 else 503,
                    latency_ms=40.0 + i % 50,
                    ttft_ms=8.0,
                    tokens_in=12,
                    tokens_out=20,
                )
            )
            s.add_all(
                db.RequestScore(request_id=request_id, version_id=version, name=name, value=value, at=at)
                for name, value in (("length", 20.0), ("empty", 0.0))
            )
            if i % 20 == 0:
                s.add(
                    db.Feedback(
                        request_id=request_id,
                        version_id=version,
                        rating=float(i % 40 == 0),
                        scale="thumbs",
                        at=at,
                    )
                )
    return config_path


def pages(versions: int, requests: int, size: int) -> dict[str, str]:
    since = f"{db.utcnow() - timedelta(minutes=1):%Y-%m-%dT%H:%M}"
    last_requests = max(1, -(-requests // size))
    last_versions = max(1, -(-versions // size))
    return {
        "overview": "/",
        "registry, first page": "/registry",
        "registry, last page": f"/registry?page={last_versions}",
        f"version {FAMILY}-v{versions}": f"/registry/v/{FAMILY}-v{versions}",
        "family (alias history)": f"/registry/family/{FAMILY}",
        "runs": "/runs",
        f"run of {FAMILY}-v{versions}": f"/runs/run-bench-{versions:04d}",
        "deployments, first page": "/deployments",
        "deployments, last page": f"/deployments?page={last_requests}",
        "deployments, errors": "/deployments?status=error",
        "live request stream": f"/deployments/stream.json?since={since}",
        "monitoring, 24h": "/monitoring",
        "evaluations": "/evaluations",
        "datasets": "/datasets",
    }


def time_pages(config_path: Path, paths: dict[str, str], repeat: int) -> dict[str, list[float]]:
    config = load_config(config_path, ["ui.auth=none"])  # on 127.0.0.1; the sign-in is not what is timed
    times: dict[str, list[float]] = {}
    with ui_in_background(config, config_path) as url, httpx.Client(base_url=url, timeout=60) as client:
        for label, path in paths.items():
            response = client.get(path)
            if response.status_code != 200:
                raise SystemExit(f"{path}: HTTP {response.status_code}\n{response.text[:500]}")
            samples = []
            for _ in range(repeat):
                start = time.perf_counter()
                client.get(path).raise_for_status()
                samples.append((time.perf_counter() - start) * 1000)
            times[label] = samples
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunesmith-ui-bench-") as tmp:
        console.print(
            f"Filling a small store (10 versions, 100 requests) and a large one ({args.versions} versions, "
            f"{args.requests:,} requests)…"
        )
        small = fill(Path(tmp) / "small", 10, 100)
        large = fill(Path(tmp) / "large", args.versions, args.requests)
        size = load_config(large).ui.page_size
        small_paths = pages(10, 100, size)
        large_paths = pages(args.versions, args.requests, size)
        small_times = time_pages(small, small_paths, args.repeat)
        large_times = time_pages(large, large_paths, args.repeat)
    table = results_table(
        f"tunesmith ui page times (ms, median of {args.repeat}; {size} rows per page)",
        ["page", "small: median", "small: p95", "large: median", "large: p95", "large / small"],
    )
    for label, small_label in zip(large_paths, small_paths, strict=True):
        a, b = small_times[small_label], large_times[label]
        ma, mb = statistics.median(a), statistics.median(b)
        table.add_row(
            label,
            f"{ma:.1f}",
            f"{sorted(a)[int(0.95 * (len(a) - 1))]:.1f}",
            f"{mb:.1f}",
            f"{sorted(b)[int(0.95 * (len(b) - 1))]:.1f}",
            f"{mb / ma:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
