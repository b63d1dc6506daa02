"""Training runs and evaluations started from the web app, each in a process of its own.

`start_job` writes `ui-jobs/<id>/job.json` in the workspace and starts
`python -m tunesmith.ui.jobs <folder>`, whose output goes to `output.log` beside it. The job
process records what it made as soon as it exists (the run id before training starts, then the
version; the eval report), so the app can show the run's live curve. A job whose process is gone
without saying so is shown as `died`; a training run it left `running` is marked failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith.workspace import Workspace, pid_alive

JOB_ID = re.compile(r"^job-\d{8}-\d{6}-[0-9a-f]{4}$")
KINDS = ("train", "eval")


@dataclass
class Job:
    id: str
    kind: str  # train, eval
    config_path: str
    overrides: list[str]
    options: dict[str, Any]  # eval: version, compare, judge, probe
    started_by: str
    created: str
    status: str = "starting"  # starting, running, finished, failed, died
    pid: int | None = None
    run_id: str | None = None
    version: str | None = None
    report_id: str | None = None
    error: str | None = None
    finished: str | None = None
    steps: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running")


def jobs_dir(workspace: Workspace) -> Path:
    return workspace.root / "ui-jobs"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(folder: Path, job: Job) -> None:
    partial = folder / ".job.json.tmp"
    partial.write_text(json.dumps(asdict(job), indent=2), encoding="utf-8")
    partial.replace(folder / "job.json")  # a reader never sees half a record


def start_job(
    workspace: Workspace,
    kind: str,
    config_path: Path,
    overrides: list[str],
    options: dict[str, Any] | None = None,
    *,
    started_by: str,
) -> Job:
    """Record a job and start its process; the caller has validated the config already."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job(
        id=f"job-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}",
        kind=kind,
        config_path=str(config_path.resolve()),
        overrides=list(overrides),
        options=dict(options or {}),
        started_by=started_by,
        created=_now(),
    )
    folder = jobs_dir(workspace) / job.id
    folder.mkdir(parents=True)
    _write(folder, job)
    env = {**os.environ, "COLUMNS": "120", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    with (folder / "output.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunesmith.ui.jobs", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(Path(job.config_path).parent),
            env=env,
            start_new_session=True,  # the app's Ctrl-C does not kill a training run
        )
    job.pid = process.pid
    _write(folder, job)
    return job


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    return pid_alive(pid)


def read_job(workspace: Workspace, job_id: str) -> Job | None:
    if not JOB_ID.match(job_id):
        return None
    path = jobs_dir(workspace) / job_id / "job.json"
    if not path.exists():
        return None
    job = Job(**json.loads(path.read_text(encoding="utf-8")))
    if job.active and not _alive(job.pid):
        job = Job(**json.loads(path.read_text(encoding="utf-8")))  # it may have just finished
        if job.active:
            job.status, job.error = "died", job.error or "the job's process ended without finishing"
    return job


def list_jobs(workspace: Workspace, limit: int = 20) -> list[Job]:
    folder = jobs_dir(workspace)
    if not folder.exists():
        return []
    names = sorted((p.name for p in folder.iterdir() if JOB_ID.match(p.name)), reverse=True)[:limit]
    return [job for job in (read_job(workspace, name) for name in names) if job is not None]


def log_tail(workspace: Workspace, job_id: str, max_bytes: int = 20_000) -> str:
    """The end of the job's output, without the progress bars' carriage-return redraws."""
    if not JOB_ID.match(job_id):
        return ""
    path = jobs_dir(workspace) / job_id / "output.log"
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines())


def _run(folder: Path) -> int:  # pragma: no cover - runs in the job's own process
    import warnings

    from tunesmith.config import load_config

    # raised inside TRL/PEFT on every run, about their own calls (as `tunesmith` itself filters it)
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    from tunesmith.workspace import open_workspace

    job = Job(**json.loads((folder / "job.json").read_text(encoding="utf-8")))
    job.status = "running"
    _write(folder, job)
    workspace = None
    try:
        config = load_config(Path(job.config_path), job.overrides)
        workspace = open_workspace(config)
        if job.kind == "train":
            from tunesmith.train.run import open_train_run, train_existing_run

            job.steps.append("preparing data")
            _write(folder, job)
            job.run_id = open_train_run(config, workspace)
            job.steps.append(f"training in {job.run_id}")
            _write(folder, job)
            outcome = train_existing_run(config, job.run_id)
            assert outcome is not None
            job.version = outcome.version.name
        else:
            from tunesmith.evaluate.runner import run_eval

            job.steps.append(f"evaluating {job.options['version']}")
            _write(folder, job)
            result = run_eval(
                config,
                job.options["version"],
                compare=job.options.get("compare"),
                probe=job.options.get("probe"),
                judge=job.options.get("judge"),
            )
            job.report_id = result.report_id
        job.status = "finished"
    except BaseException as exc:
        traceback.print_exc()
        job.status, job.error = "failed", f"{exc.__class__.__name__}: {exc}"
        if workspace is not None and job.run_id is not None:
            _fail_run(workspace, job.run_id, job.error)
    job.finished = _now()
    _write(folder, job)
    return 0 if job.status == "finished" else 1


def _fail_run(workspace: Workspace, run_id: str, error: str) -> None:
    """A run the job opened and left `running` (it failed before its trainer started) is failed."""
    from tunesmith.store import Run, session
    from tunesmith.store.schema import utcnow

    with session(workspace.engine) as s:
        run = s.get(Run, run_id)
        if run is not None and run.status == "running":
            run.status, run.error, run.finished_at = "failed", error, utcnow()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_run(Path(sys.argv[1])))
