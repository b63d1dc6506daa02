"""The request log: every answered request and shadow answer, written to the store off the request path.

Requests put a row on an in-memory queue and return; one thread writes the rows in batches. A
failed write keeps the rows and retries, and closing the writer drains what is left, so a clean
shutdown loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from tunesmith.store import RequestLog, session
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")


class RequestLogWriter:
    def __init__(self, workspace: Workspace, *, flush_seconds: float = 0.2, batch: int = 200) -> None:
        self.workspace = workspace
        self.flush_seconds = flush_seconds
        self.batch = batch
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="tunesmith-request-log", daemon=True)
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, row: dict[str, Any]) -> None:
        self._queue.put(row)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row queued so far is written (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while (self._queue.unfinished_tasks or 0) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _work(self) -> None:
        pending: list[dict[str, Any]] = []
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
                    with session(self.workspace.engine) as s:
                        s.add_all(RequestLog(**row) for row in pending)
                    self.written += len(pending)
                    for _ in pending:
                        self._queue.task_done()
                    pending = []
                except Exception:  # the store is busy or gone: keep the rows and try again
                    log.exception("could not write %d request log row(s); retrying", len(pending))
                    time.sleep(self.flush_seconds)
            if stopping and self._queue.empty() and not pending:
                return
