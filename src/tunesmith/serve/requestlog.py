"""The request log: every answered request and shadow answer, written to the store off the request path.

A request appends its row to a journal file and puts it on an in-memory queue before its answer
goes out; one thread writes the queued rows to the store in batches. The journal is what makes a
killed server lose nothing: the write is in the operating system's hands before the client has
its answer, and the next server to start on this machine replays whatever the store is missing.
A journal segment is removed once every row in it is in the store.

A failed store write keeps the rows and retries, and closing the writer drains what is left.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.monitor.feedback import FeedbackIn
from tunesmith.store import RequestLog, session
from tunesmith.workspace import Workspace, pid_alive

log = logging.getLogger("tunesmith.serve")

JOURNAL_DIR = "request-journal"
SEGMENT_BYTES = 8 * 2**20  # a new journal file after this much; older ones go once written
_LIVE: set[str] = set()  # journal tokens of the writers open in this process


def journal_folder(workspace: Workspace) -> Path:
    """This machine's journals in `workspace` (a workspace on a shared disk has one folder per host)."""
    return workspace.root / JOURNAL_DIR / socket.gethostname()


class RequestLogWriter:
    def __init__(self, workspace: Workspace, *, flush_seconds: float = 0.2, batch: int = 200) -> None:
        self.workspace = workspace
        self.flush_seconds = flush_seconds
        self.batch = batch
        self._queue: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="tunesmith-request-log", daemon=True)
        self._lock = threading.Lock()  # one journal append and its queue entry at a time
        self._folder = journal_folder(workspace)
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._segment = 0
        self._fd: int | None = None
        self._size = 0
        self._journal_failed = False
        self.written = 0
        self.replayed = 0

    def start(self) -> None:
        """Replay the journals that stopped servers left, then open this writer's own and start writing."""
        self._folder.mkdir(parents=True, exist_ok=True)
        self.replayed = replay_journals(self.workspace)
        _LIVE.add(self._token)
        self._open_segment()
        self._thread.start()

    def put(self, row: dict[str, Any]) -> None:
        """Journal `row` and queue it for the store; when this returns, a killed process keeps it."""
        line = (json.dumps(row, default=_encode, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is not None:
                try:
                    if self._size > SEGMENT_BYTES:
                        self._open_segment()
                    _write_all(self._fd, line)
                    self._size += len(line)
                except OSError as exc:  # a full disk: answer anyway, the row still goes to the store
                    if not self._journal_failed:
                        log.error("request journal %s: %s; rows are kept in memory only", self._folder, exc)
                    self._journal_failed = True
                else:
                    self._journal_failed = False
            self._queue.put((self._segment, row))

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Write what is queued; the journal goes too, unless rows could not reach the store."""
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            drained = not self._thread.is_alive() and not self._queue.unfinished_tasks
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if drained:
                self._remove_segments(below=None)
            else:
                log.error("request log rows are still unwritten; the next server start replays them")
            _LIVE.discard(self._token)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row queued so far is written (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while (self._queue.unfinished_tasks or 0) and time.monotonic() < deadline:
            time.sleep(0.02)

    # --- the journal ------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self._folder / f"{self._token}-{segment:06d}.jsonl"

    def _open_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._segment += 1
        self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0

    def _remove_segments(self, below: int | None) -> None:
        """Remove this writer's segments before `below` (None: all of them, the open one included)."""
        for path in self._folder.glob(f"{self._token}-*.jsonl"):
            segment = int(path.stem.rsplit("-", 1)[1])
            if below is None or segment < below:
                path.unlink(missing_ok=True)

    def _written(self, last_segment: int) -> None:
        """After a batch reached the store: drop the segments it finished, or all when nothing waits."""
        with self._lock:
            if not self._queue.unfinished_tasks and self._fd is not None:
                os.ftruncate(self._fd, 0)  # O_APPEND: the next row goes to the start again
                self._size = 0
                self._remove_segments(below=self._segment)
            else:
                self._remove_segments(below=last_segment)

    def _work(self) -> None:
        pending: list[tuple[int, dict[str, Any]]] = []
        while True:
            stopping = self._stop.is_set()
            try:
                pending.append(self._queue.get(timeout=self.flush_seconds))
                while len(pending) < self.batch:
                    pending.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if pending:
                try:
                    self.written += store_rows(self.workspace, [row for _, row in pending])
                    last_segment = pending[-1][0]
                    for _ in pending:
                        self._queue.task_done()
                    pending = []
                    self._written(last_segment)
                except Exception:  # the store is busy or gone: keep the rows and try again
                    log.exception("could not write %d request log row(s); retrying", len(pending))
                    time.sleep(self.flush_seconds)
            if stopping and self._queue.empty() and not pending:
                return


def store_rows(workspace: Workspace, rows: list[dict[str, Any]]) -> int:
    """Add the rows whose ids the store does not have yet (a replay may repeat some); returns how many."""
    with session(workspace.engine) as s:
        ids = [row["id"] for row in rows]
        present = set(s.scalars(select(RequestLog.id).where(RequestLog.id.in_(ids))))
        new = {row["id"]: row for row in rows if row["id"] not in present}  # ids are unique per answer
        s.add_all(RequestLog(**row) for row in new.values())
    return len(new)


def replay_journals(workspace: Workspace, batch: int = 500) -> int:
    """Store the rows of journals whose server is gone, then remove them; returns the rows added.

    A torn last line (the process died mid-write, before that answer went out) is skipped. A store
    that cannot be written keeps the journal for the next start.
    """
    folder = journal_folder(workspace)
    added = 0
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        token = path.stem.rsplit("-", 1)[0]
        pid = int(token.split("-", 1)[0])
        if token in _LIVE or (pid != os.getpid() and pid_alive(pid)):
            continue  # a running server's journal
        rows, torn = _read_journal(path)
        try:
            found = sum(store_rows(workspace, rows[i : i + batch]) for i in range(0, len(rows), batch))
        except Exception:
            log.exception("could not replay the request journal %s; it is kept for the next start", path)
            continue
        added += found
        if found or torn:
            log.warning(
                "request log: %d answered request(s) replayed from %s, left by a server (pid %d) that "
                "stopped without closing%s",
                found,
                path.name,
                pid,
                f"; {torn} torn line(s) skipped" if torn else "",
            )
        path.unlink(missing_ok=True)
    return added


@dataclass(frozen=True)
class PiiScrubber:
    """`serve.log_pii: scrub`: personal data in what is logged becomes typed placeholders."""

    keep: tuple[str, ...]

    def text(self, value: str) -> str:
        from tunesmith.data.clean import scrub_pii

        return scrub_pii(value, Counter(), keep=self.keep)

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A request log row with its prompt (text or messages), answers and metadata values scrubbed."""
        client = row["client"]
        metadata = {k: self._any(v) for k, v in client["metadata"].items()}
        return {
            **row,
            "prompt": self._any(row["prompt"]),
            "output": [self.text(t) for t in row["output"]],
            "client": {**client, "metadata": metadata},
        }

    def _any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._any(item) for item in value]
        if isinstance(value, dict):  # a message: its content, not its role
            return {k: self._any(v) if k == "content" else v for k, v in value.items()}
        return value

    def feedback(self, body: FeedbackIn) -> FeedbackIn:
        """The comment, the correction and a preference's texts (choice indices stay as they are)."""

        def scrub(value: Any) -> Any:
            return self.text(value) if isinstance(value, str) else value

        preference = body.preference
        if preference is not None:
            preference = preference.model_copy(
                update={"chosen": scrub(preference.chosen), "rejected": scrub(preference.rejected)}
            )
        update = {
            "comment": scrub(body.comment),
            "correction": scrub(body.correction),
            "preference": preference,
        }
        return body.model_copy(update=update)


def pii_scrubber(mode: str, keep: list[str]) -> PiiScrubber | None:
    return PiiScrubber(tuple(keep)) if mode == "scrub" else None


def _read_journal(path: Path) -> tuple[list[dict[str, Any]], int]:
    rows, torn = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["at"] = datetime.fromisoformat(row["at"])
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        rows.append(row)
    return rows, torn


def _encode(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
