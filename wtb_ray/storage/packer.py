"""Compressing workspace chunks after their checkpoint committed, off the boundary path.

A small change's new chunks ride in the boundary transaction raw (codec 'r'): compressing
them there (zstd level 1 runs at ~300 MB/s of text on a small VM) cost a 10 MB workspace's
checkpoint after a 1% change a fifth of its time. Once the commit is done the store hands
them to this thread, which compresses them (zstd releases the GIL) and rewrites those that
shrink (codec 's'). One that does not shrink is left as it is, and so is one whose process
stops first, or that arrives while more than MAX_QUEUED_BYTES wait: both read back the same,
only larger. The thread exits after IDLE_S without work.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable

from wtb_ray.storage import codec

log = logging.getLogger(__name__)

MAX_QUEUED_BYTES = 64 << 20
BATCH_BYTES = 1 << 20  # rewritten per transaction: each holds the write lock briefly
IDLE_S = 30.0

Rewrite = Callable[[list[tuple[str, bytes, str]]], None]  # [(codec, payload, hash)]


class Packer:
    def __init__(self, rewrite: Rewrite) -> None:
        self._rewrite = rewrite
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued = 0  # bytes in the queue and in the batch being packed
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.packed = 0  # chunks rewritten compressed
        self.left_raw = 0  # chunks left raw: they did not shrink, or the queue was full

    def add(self, chunks: Iterable[tuple[str, bytes]]) -> None:
        """Raw chunks (hash, bytes) now committed with codec 'r'."""
        with self._cond:
            for h, data in chunks:
                if self._queued + len(data) > MAX_QUEUED_BYTES:
                    self.left_raw += 1
                    continue
                self._queue.append((h, data))
                self._queued += len(data)
            if not self._queue or self._stopping:
                return
            self._cond.notify()
            if self._thread is None or not self._thread.is_alive():  # first, idle, os.fork
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="wtb-chunk-packer")
                self._thread.start()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued chunk is packed; False if ``timeout`` came first."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return not self._queue
            return self._cond.wait_for(lambda: self._queued == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Pack what is queued (up to ``timeout``), then stop the thread."""
        self.drain(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._queue or self._stopping, IDLE_S) \
                        or self._stopping:
                    self._thread = None
                    return
                batch, size = [], 0
                while self._queue and size < BATCH_BYTES:
                    batch.append(self._queue.popleft())
                    size += len(batch[-1][1])
            self._pack(batch)
            with self._cond:
                self._queued -= size
                self._cond.notify_all()

    def _pack(self, batch: list[tuple[str, bytes]]) -> None:
        rows = []
        for h, data in batch:
            packed_codec, payload = codec.pack_chunk(data)
            if packed_codec == "j":  # it did not shrink
                self.left_raw += 1
            else:
                rows.append((packed_codec, payload, h))
        if not rows:
            return
        try:
            self._rewrite(rows)
            self.packed += len(rows)
        except Exception as exc:  # the chunks stay raw: correct, only larger
            self.left_raw += len(rows)
            log.warning("could not rewrite %d workspace chunk(s) compressed: %s", len(rows), exc)
