"""`tunesmith improve` on a production-sized log: 100k logged requests and 5k feedback rows in a real
SQLite store. It streams the log, joined in SQL, instead of loading every request and listing their
ids in one query (PostgreSQL refuses more than 65,535 parameters, SQLite builds by default 32,766):
reading it took 263-405 MiB that way, and a few MiB now. It says how many rows it read and used."""

from __future__ import annotations

import re
import tracemalloc
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from typer.testing import CliRunner

from store_helpers import stored_run, stored_version
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.monitor.improve import Selection, select_examples
from tunesmith.registry.versions import resolve_name
from tunesmith.store import Feedback, RequestLog, RequestScore, session
from tunesmith.workspace import open_workspace

REQUESTS, CORRECTIONS, RATINGS = 100_000, 3_000, 2_000


def _fill(workspace) -> None:
    """100k answered requests of p-v1 over a day, a relevance score on each, 3k corrections on
    requests 0, 20, 40... and 2k thumbs on the ones in between."""
    start = datetime.now(UTC) - timedelta(days=1)
    with session(workspace.engine) as s:
        s.add(stored_run())
    with session(workspace.engine) as s:
        s.add(stored_version(1))
    for chunk in range(0, REQUESTS, 10_000):
        ids = range(chunk, chunk + 10_000)
        with session(workspace.engine) as s:
            s.execute(insert(RequestLog), [_request(i, start) for i in ids])
            s.execute(
                insert(RequestScore),
                [
                    {
                        "request_id": f"req-{i}",
                        "version_id": "mv-1",
                        "name": "relevance",
                        "value": i % 10 / 10,
                    }
                    for i in ids
                ],
            )
    feedback = [
        {"request_id": f"req-{20 * n}", "version_id": "mv-1", "correction": f"Desk {n} opens at {n % 12} am."}
        for n in range(CORRECTIONS)
    ]
    feedback += [
        {"request_id": f"req-{20 * n + 10}", "version_id": "mv-1", "rating": float(n % 2), "scale": "thumbs"}
        for n in range(RATINGS)
    ]
    with session(workspace.engine) as s:
        s.execute(insert(Feedback), feedback)


def _request(i: int, start: datetime) -> dict:
    return {
        "id": f"req-{i}",
        "at": start + timedelta(seconds=i * 0.8),
        "endpoint": "chat",
        "requested_model": "p@production",
        "version_id": "mv-1",
        "route": "primary",
        "prompt": [{"role": "user", "content": f"When does desk {i % 5000} open on day {i}?"}],
        "output": [f"Desk {i % 5000} opens whenever it likes, on day {i}."],
        "finish_reasons": ["stop"],
        "params": {},
        "status": 200,
        "latency_ms": 12.0,
    }


def test_improve_streams_a_100k_request_log_in_bounded_memory_and_reports_what_it_used(
    tmp_path, tiny_model_dir
):
    settings = [f"workspace={tmp_path / 'ws'}", "project=p", f"model.id={tiny_model_dir}"]
    workspace = open_workspace(load_config(None, settings))
    _fill(workspace)
    production = resolve_name(workspace, "p-v1")

    tracemalloc.start()
    found = select_examples(workspace, production, Selection(model="p-v1", where=["relevance>=0.5"]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # every request with feedback (0, 10, 20...) scores relevance 0.0: none passes relevance>=0.5
    assert found.matched == REQUESTS // 2 and found.feedback == 0 and not found.sft
    assert peak < 10 * 2**20, f"{peak / 2**20:.0f} MiB to read a log it uses nothing of"

    tracemalloc.start()
    found = select_examples(workspace, production, Selection(model="p-v1"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (found.matched, found.feedback) == (REQUESTS, CORRECTIONS + RATINGS)
    assert len(found.sft) == CORRECTIONS and len(found.used) == CORRECTIONS + RATINGS
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB for {CORRECTIONS + RATINGS} feedback rows"

    cli = ["improve", "p-v1", "--no-train", "--feedback", "correction"]
    result = CliRunner().invoke(app, [*cli, *[a for s in settings for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "100,000 logged request(s) matched the selection, 5,000 feedback row(s) read" in text
    assert re.search(r"\b3000 request\(s\) with feedback → 3000 SFT row\(s\)", text), text


def test_a_fifth_of_the_corrected_requests_is_held_out_the_same_way_each_time():
    from tunesmith.monitor.improve import hold_out

    def rows(n: int) -> list[dict]:
        return [{"origin": {"request_id": f"req-{i}"}} for i in range(n)]

    assert hold_out(rows(4), 0.2) == set()  # too few to spare one
    held = hold_out(rows(10), 0.2)
    assert len(held) == 2 and held == hold_out(list(reversed(rows(10))), 0.2)
    assert held <= hold_out(rows(10), 0.5) and hold_out(rows(10), 0.0) == set()
    assert len(hold_out(rows(5), 0.9)) == 4  # never all of them: something is left to train on


def test_rehearsal_takes_a_seeded_share_of_what_production_trained_on(tmp_path):
    from tunesmith.data.prepare import load_split, prepare_dataset
    from tunesmith.monitor.improve import rehearsal_rows
    from tunesmith.pipeline import write_demo_project

    config = load_config(write_demo_project(tmp_path))
    workspace = open_workspace(config)
    dataset, _ = prepare_dataset(workspace, config.data, base_dir=config.base_dir)
    with session(workspace.engine) as s:
        s.add(stored_run())
    production = stored_version(1)
    production.dataset_version_id = dataset.id
    with session(workspace.engine) as s:
        s.add(production)
    trained = [r["messages"] for r in load_split(dataset, "train")]
    half = rehearsal_rows(workspace, production, 0.5)
    assert len(half) == round(len(trained) / 2) and half == rehearsal_rows(workspace, production, 0.5)
    assert all(set(row) == {"messages"} and row["messages"] in trained for row in half)
    assert rehearsal_rows(workspace, production, 0.0) == []


def test_a_version_improve_made_is_judged_on_the_split_its_parent_was_judged_on(tmp_path):
    """Its own dataset's test split holds only the held-out corrections: the next improve must judge
    its candidate on the project's test split, as the first production was judged."""
    from tunesmith.monitor.improve import judged_on
    from tunesmith.store import DatasetVersion

    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    with session(workspace.engine) as s:
        s.add(stored_run())
        for name, lineage in (("ds-project", {}), ("ds-improve-1", {"source": "production"})):
            meta = {"lineage": lineage} if lineage else {}
            s.add(
                DatasetVersion(
                    id=name,
                    name=name,
                    content_hash=name,
                    source="f",
                    format="chat",
                    counts={},
                    path="p",
                    meta=meta,
                )
            )
    first, second, third = stored_version(1), stored_version(2), stored_version(3)
    first.dataset_version_id = "ds-project"
    second.dataset_version_id, second.parent_id = "ds-improve-1", first.id
    third.dataset_version_id, third.parent_id = "ds-improve-1", second.id
    for version in (first, second, third):
        with session(workspace.engine) as s:
            s.add(version)
    assert [judged_on(workspace, v) for v in (first, second, third)] == ["ds-project"] * 3
