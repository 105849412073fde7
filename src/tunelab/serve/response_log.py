"""Every answered request goes to the registry (``served_responses``) from a writer thread.

Requests never wait on the database: rows are queued and written in batches every ``every`` seconds
(one transaction each). Feedback refers to a response by id, so the feedback route flushes first.
"""

from __future__ import annotations

import logging
import threading

from tunelab.registry.serving import record_responses

log = logging.getLogger(__name__)


class ResponseLog:
    def __init__(self, registry, every: float = 0.5):
        self.registry, self.every = registry, every
        self.pending: list[dict] = []
        self.lock = threading.Lock()  # guards pending
        self.writing = threading.Lock()  # held while a batch is written: flush() returns once it is in
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tunelab-response-log", daemon=True)

    def start(self) -> ResponseLog:
        self.thread.start()
        return self

    def add(self, row: dict) -> None:
        with self.lock:
            self.pending.append(row)

    def flush(self) -> None:
        with self.writing:
            with self.lock:
                rows, self.pending = self.pending, []
            if not rows:
                return
            try:
                with self.registry.session() as session:
                    record_responses(session, rows)
            except Exception:  # the registry is down: the answers were given; say so once per batch
                log.exception("could not record %d served responses in the registry", len(rows))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.flush()

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            self.flush()
