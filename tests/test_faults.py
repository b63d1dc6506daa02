"""Faults: a process killed with SIGKILL in the middle of writing leaves nothing half-written under a
final name, the next write removes what it left, and the work can be done again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import logged_metrics
from tunesmith.config import load_config
from tunesmith.data import prepare_data
from tunesmith.store import DatasetVersion, session
from tunesmith.workspace import atomic_dir, open_workspace, remove_stale_temps


def _big_project(root: Path, model: Path, rows: int) -> Path:
    data = root / "data.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            question = f"What is the opening time of branch {i} on day {i % 7}?"
            answer = f"Branch {i} opens at {8 + i % 4} o'clock, {i * 7919 % 1000} metres from the station."
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    config = {"project": "faults", "data": {"path": str(data)}, "model": {"id": str(model)}}
    path = root / "tunesmith.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_data_preparation_killed_while_writing_leaves_no_dataset_and_resumes(tmp_path, tiny_model_dir):
    config_path = _big_project(tmp_path, tiny_model_dir, 6_000)
    datasets = tmp_path / ".tunesmith" / "datasets"
    killed_mid_write = False
    for _attempt in range(3):  # the write is the last second of the run; catch the process inside it
        process = subprocess.Popen(
            [sys.executable, "-m", "tunesmith.cli", "data", "prepare", str(config_path)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if datasets.exists() and any(datasets.glob(".*.tmp")):
                os.kill(process.pid, signal.SIGKILL)
                killed_mid_write = True
                break
            time.sleep(0.002)
        process.wait()
        if killed_mid_write:
            break
    assert killed_mid_write, "the preparation was never caught writing"
    config = load_config(config_path)
    workspace = open_workspace(config)
    with session(workspace.engine) as s:
        assert s.query(DatasetVersion).count() == 0  # nothing half-written is visible
    assert not [p for p in datasets.iterdir() if not p.name.startswith(".")]
    assert list(datasets.glob(".*.tmp"))  # what the killed process left behind...

    version = prepare_data(config, workspace)  # ...the next run removes, and does the work again
    assert not list(datasets.glob(".*.tmp"))
    assert version.counts["train"] + version.counts["val"] + version.counts["test"] > 5_000
    assert (Path(version.path) / "report.json").exists()


def test_a_live_writers_temporary_folder_is_left_alone(tmp_path):
    with atomic_dir(tmp_path / "target") as tmp:
        (tmp / "half").write_text("x")
        assert remove_stale_temps(tmp_path) == []  # this process is alive: its folder stays
        dead = tmp_path / ".other.999999999.abcd.tmp"
        dead.mkdir()
        assert remove_stale_temps(tmp_path) == [dead]
    assert (tmp_path / "target" / "half").exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_server_killed_under_traffic_loses_no_answered_request(serve_project):
    """The store is held busy, so answers pile up unwritten; the server is killed with SIGKILL. The
    next start replays its journal: every request that was answered is in the log."""
    import sqlite3
    import threading

    import httpx2 as httpx
    from sqlalchemy import select

    from serve_helpers import free_port, ready, start_cli_server, wait_for
    from tunesmith.serve.requestlog import journal_folder
    from tunesmith.store import RequestLog

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_path, settings = serve_project["path"], serve_project["settings"]
    workspace = open_workspace(load_config(config_path, settings))
    server = start_cli_server(config_path, settings, port)
    answered: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(4):
                body = {"model": serve_project["family"], "max_tokens": 4, "stream": i % 2 == 1}
                body["messages"] = [{"role": "user", "content": f"client {n} asks {i}: when do you open?"}]
                with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    text = response.read().decode()
                    if response.status_code == 200 and (not body["stream"] or "data: [DONE]" in text):
                        with lock:
                            answered.append(response.headers["x-request-id"])

    busy = sqlite3.connect(workspace.root / "tunesmith.db", timeout=30)
    try:
        wait_for(lambda: ready(url), timeout=120, every=0.2)
        busy.execute("BEGIN IMMEDIATE")  # the store takes no writes: answered rows wait in memory
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        os.kill(server.pid, signal.SIGKILL)
        output, _ = server.communicate(timeout=30)
    finally:
        busy.rollback()
        busy.close()
        if server.poll() is None:
            server.kill()
    assert len(answered) == 16, output
    with session(workspace.engine) as s:
        before = set(s.scalars(select(RequestLog.id).where(RequestLog.id.in_(answered))))
    assert before == set(), "the store was busy: nothing could have been written before the kill"
    assert list(journal_folder(workspace).glob("*.jsonl"))

    restarted = start_cli_server(config_path, settings, port)
    try:
        wait_for(lambda: ready(url), timeout=120, every=0.2)
    finally:
        restarted.send_signal(signal.SIGINT)
        output, _ = restarted.communicate(timeout=60)
    assert "replayed from" in output, output
    with session(workspace.engine) as s:
        logged = set(s.scalars(select(RequestLog.id).where(RequestLog.id.in_(answered))))
    assert logged == set(answered), f"{len(set(answered) - logged)} answered requests are missing"
    assert not list(journal_folder(workspace).glob("*.jsonl"))  # replayed, then a clean stop removed its own


RUN_CLI = """
from tunesmith.cli import main

sys.argv = ["tunesmith", *sys.argv[1:]]
main()
"""


def _tunesmith(
    *args: str, patch: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tunesmith ARGS` in a process of its own; `patch` runs first (it may kill the process on purpose)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + patch + RUN_CLI, *args],
        env={**os.environ, **(env or {})},
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


# Runs `tunesmith` with the trainer's checkpoint save cut by SIGKILL at one step: after the weights
# and the optimizer are written, before the trainer state that marks the checkpoint complete.
KILL_INSIDE_CHECKPOINT = """
import os, signal, sys
from transformers import Trainer

save_rng_state = Trainer._save_rng_state


def kill_at_step(self, output_dir):
    if self.state.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng_state(self, output_dir)


Trainer._save_rng_state = kill_at_step
"""

CHECKPOINTING = [
    "train.max_steps=60",
    "train.batch_size=2",
    "train.save_strategy=steps",
    "train.save_steps=20",
    "train.save_total_limit=2",
    "train.forgetting.probe=false",
    "data.split.val=0",
]


def _train_command(config_path: Path, model: Path, *extra: str) -> list[str]:
    settings = [f"model.id={model}", *CHECKPOINTING, *extra]
    return ["train", str(config_path), *[a for s in settings for a in ("--set", s)]]


def _one_run(config_path: Path):
    from tunesmith.store import Run

    with session(open_workspace(load_config(config_path)).engine) as s:
        return s.query(Run).one()


def _steps_logged(run_dir: Path) -> int:
    rows = logged_metrics(run_dir)
    return max(row.get("step", 0) for row in rows)


def test_a_run_killed_inside_a_checkpoint_save_resumes_from_the_one_before(tmp_path, tiny_model_dir):
    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.run import resume_run

    config_path = write_demo_project(tmp_path)
    killed = _tunesmith(
        *_train_command(config_path, tiny_model_dir), patch=KILL_INSIDE_CHECKPOINT, env={"KILL_AT_STEP": "40"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = _one_run(config_path)
    trainer = open_workspace(load_config(config_path)).run_dir(run.id) / "trainer"
    assert (trainer / "checkpoint-20" / "trainer_state.json").exists()
    assert (trainer / "checkpoint-40").exists() and not (
        trainer / "checkpoint-40" / "trainer_state.json"
    ).exists()

    resumed = resume_run(load_config(config_path, [f"model.id={tiny_model_dir}", *CHECKPOINTING]), run.id)
    assert _one_run(config_path).status == "finished"
    assert _steps_logged(resumed.run_dir) == 60
    assert json.loads((trainer / "checkpoint-40" / "trainer_state.json").read_text())["global_step"] == 40


def test_a_full_disk_during_a_checkpoint_fails_clearly_and_keeps_the_last_good_one(tmp_path, tiny_model_dir):
    """The runs folder is a small tmpfs; once the first checkpoint is written, the disk is filled."""
    import errno

    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.run import resume_run

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    config_path = write_demo_project(tmp_path)
    runs = tmp_path / ".tunesmith" / "runs"
    runs.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(runs)], check=False, capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    filler = runs / "filler"
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunesmith.cli", *_train_command(config_path, tiny_model_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if any((p / "trainer_state.json").exists() for p in runs.glob("*/trainer/checkpoint-20")):
                break
            time.sleep(0.005)
        with filler.open("wb") as handle:  # fill the disk: the next checkpoint cannot be written
            try:
                for size in (2**20, 2**12):
                    while True:
                        handle.write(b"\0" * size)
                        handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 1, output
        said = " ".join(output.split())
        assert "filled up" in said and "The last complete checkpoint, checkpoint-20, is kept" in said, said
        run = _one_run(config_path)
        assert run.status == "failed" and "DiskFullError" in (run.error or "")
        trainer = runs / run.id / "trainer"
        assert sorted(p.name for p in trainer.glob("checkpoint-*")) == ["checkpoint-20"]  # no half one

        filler.unlink()  # space again: the run resumes from checkpoint-20 and finishes
        resumed = resume_run(load_config(config_path, [f"model.id={tiny_model_dir}", *CHECKPOINTING]), run.id)
        assert _one_run(config_path).status == "finished"
        assert _steps_logged(resumed.run_dir) == 60
    finally:
        subprocess.run(["umount", "-l", str(runs)], check=False)


# Runs `tunesmith` and kills it with SIGKILL once it has generated KILL_AFTER_ANSWERS answers; the
# answer cache saves after every batch here (every 10 s normally).
KILL_MID_EVAL = """
import os, signal, sys
from tunesmith.models.generate import AnswerCache

AnswerCache.save_every = 0.0
put = AnswerCache.put
answered = []


def put_then_maybe_die(self, prompt, answer):
    answered.append(prompt)
    if len(answered) > int(os.environ["KILL_AFTER_ANSWERS"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return put(self, prompt, answer)


AnswerCache.put = put_then_maybe_die
"""


def test_an_eval_killed_mid_way_shows_no_report_and_the_rerun_reuses_its_answers(tmp_path, tiny_model_dir):
    from tunesmith.pipeline import write_demo_project
    from tunesmith.store import EvalReport
    from tunesmith.train.run import train

    config_path = write_demo_project(tmp_path)
    settings = [f"model.id={tiny_model_dir}", "train.method=lora", "train.epochs=1", "eval.batch_size=4"]
    version = train(load_config(config_path, settings)).version
    command = [
        "eval",
        version.name,
        "--config",
        str(config_path),
        *[a for s in settings for a in ("--set", s)],
    ]
    killed = _tunesmith(*command, patch=KILL_MID_EVAL, env={"KILL_AFTER_ANSWERS": "12"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    workspace = open_workspace(load_config(config_path, settings))
    with session(workspace.engine) as s:
        assert s.query(EvalReport).count() == 0
    reports = workspace.root / "reports"
    assert not reports.exists() or not [p for p in reports.iterdir() if not p.name.startswith(".")]

    rerun = _tunesmith(*command)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    with session(workspace.engine) as s:
        report = s.query(EvalReport).one()
    assert (workspace.root / "reports" / report.id / "report.json").exists()
    # the 12 answers written before the kill (3 batches of 4) come from the cache, not the model
    said = " ".join((rerun.stdout + rerun.stderr).split())
    reused = [int(n) for n in re.findall(r"(\d+) of \d+ answers from the cache", said)]
    assert sum(reused) >= 12, said


def test_an_export_killed_mid_write_leaves_no_export_and_the_next_one_completes(tmp_path, tiny_model_dir):
    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.run import train

    config_path = write_demo_project(tmp_path)
    settings = [f"model.id={tiny_model_dir}", "train.method=lora", "train.epochs=1"]
    version = train(load_config(config_path, settings)).version
    kill_in_save = """
import os, signal, sys
from transformers import PreTrainedModel

def killed(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

PreTrainedModel.save_pretrained = killed
"""
    command = ["registry", "export", version.name, "--format", "merged", "--config", str(config_path)]
    killed = _tunesmith(*command, patch=kill_in_save)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    exports = tmp_path / ".tunesmith" / "exports"
    assert [p.name for p in exports.iterdir() if not p.name.startswith(".")] == []
    assert list(exports.glob(".*.tmp"))  # the killed writer's folder, until the next write

    done = _tunesmith(*command)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert [p.name for p in exports.iterdir()] == [f"{version.name}-merged"]
    assert (exports / f"{version.name}-merged" / "parity.json").exists()


def test_a_journal_that_cannot_be_written_still_logs_the_answer(tmp_path, caplog):
    """A full or broken disk under the journal costs its protection against a kill, not the answer."""
    from tunesmith.serve.requestlog import RequestLogWriter
    from tunesmith.store import RequestLog
    from tunesmith.store.schema import utcnow
    from tunesmith.workspace import init_project

    workspace = open_workspace(load_config(init_project(tmp_path / "p")))
    writer = RequestLogWriter(workspace)
    writer.start()
    os.close(writer._fd)  # every journal write fails from here on, as on a full disk
    row = {
        "id": "req-journal-broken",
        "at": utcnow(),
        "endpoint": "chat",
        "requested_model": "m",
        "version_id": None,
        "route": "primary",
        "shadow_of": None,
        "prompt": [{"role": "user", "content": "hi"}],
        "output": ["hello"],
        "finish_reasons": ["stop"],
        "params": {},
        "status": 200,
        "error": None,
        "latency_ms": 1.0,
        "ttft_ms": None,
        "tokens_in": 1,
        "tokens_out": 1,
        "user": None,
        "session": None,
        "api_key_id": None,
        "client": {"metadata": {}},
    }
    writer.put(row)
    writer.put({**row, "id": "req-journal-broken-2"})
    writer.flush()
    writer._fd = None
    writer.close()
    with session(workspace.engine) as s:
        assert s.query(RequestLog).filter(RequestLog.id.like("req-journal-broken%")).count() == 2
    assert sum("kept in memory only" in r.getMessage() for r in caplog.records) == 1  # said once
