"""Faults: a process killed with SIGKILL in the middle of writing leaves nothing half-written under a
final name, the next write removes what it left, and the work can be done again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tunesmith.config import load_config
from tunesmith.pipeline import prepare_data
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
