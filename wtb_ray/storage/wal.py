"""SQLite WAL checkpoints on a thread of their own, off the commit path.

By default SQLite checkpoints in the connection whose commit takes the WAL past 1000 pages:
that commit copies the pages back into the database file and fsyncs it. With 8 KiB pages a
node boundary appends ~15 pages, so about one boundary in 70 took ~5 ms instead of ~0.08:
a quarter of all commit time. Here the store's connections have automatic checkpoints off;
after each write transaction the committer reads how far the WAL has grown (the wal-index
header in the -shm file: https://www.sqlite.org/walformat.html) and, past CHECKPOINT_FRAMES
not yet copied back, wakes this thread, which runs a PASSIVE checkpoint while writers go on.

SQLite rewinds the WAL only once a checkpoint has reached its end, which this thread cannot
do while a writer never pauses (each round ends behind the commits made during it). Past
BEHIND_FRAMES a commit that finds little left to copy checkpoints inline, as SQLite itself
would have, and reaches the end: the next transaction rewinds the WAL, which stays bounded.
(A RESTART checkpoint on the thread would rewind it too, but would block writers for as long
as a reader keeps an old snapshot.) The thread exits after IDLE_S without work; the next
commit that needs it starts it again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_FRAMES = 1000  # SQLite's own threshold, on the thread instead of the commit
BEHIND_FRAMES = 2000  # a WAL this long is checkpointed by the next commit itself that
INLINE_FRAMES = 100  # finds at most this many frames left to copy (the thread did the rest),
# and by any commit once it is twice as long (the thread is slow: as SQLite itself would)
IDLE_S = 30.0
_WAL_INDEX_VERSION = 3007000


class WalCheckpointer:
    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self.path = path
        self.shm = f"{path}-shm"
        self.busy_timeout_ms = busy_timeout_ms
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.checkpoints = 0  # run by the thread so far
        self.inline = 0  # run by a commit that found the WAL too long

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def committed(self, conn: sqlite3.Connection) -> None:
        """A write transaction committed on ``conn`` (still the caller's): a few us. Never
        raises: the commit stands whatever happens to a checkpoint."""
        frames = self.frames()
        if frames is None:  # header unreadable: let the thread check with a checkpoint
            self._start()
        elif frames[0] >= BEHIND_FRAMES and (frames[1] <= INLINE_FRAMES
                                             or frames[0] >= 2 * BEHIND_FRAMES):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.inline += 1
            except sqlite3.Error as exc:  # a later commit tries again
                log.debug("WAL checkpoint of %s failed: %s", self.path, exc)
        elif frames[1] >= CHECKPOINT_FRAMES or frames[0] >= BEHIND_FRAMES:
            self._start()

    def frames(self) -> tuple[int, int] | None:
        """(frames in the WAL, frames not yet copied back into the database file), or None
        if the wal-index header cannot be read. Opened each time: SQLite deletes the file
        when the database's last connection closes."""
        try:
            fd = os.open(self.shm, os.O_RDONLY)
            try:
                header = os.pread(fd, 100, 0)
            finally:
                os.close(fd)
        except OSError:
            return None
        if len(header) < 100 or header[12] != 1 or (
                struct.unpack_from("=I", header, 0)[0] != _WAL_INDEX_VERSION):
            return None
        last, backfilled = struct.unpack_from("=I", header, 16)[0], struct.unpack_from(
            "=I", header, 96)[0]
        return last, last - backfilled

    def _start(self) -> None:
        self._wake.set()
        thread = self._thread
        if thread is None or not thread.is_alive():  # first time, idle exit, or os.fork
            with self._lock:
                if not self._stopping and (self._thread is None or not self._thread.is_alive()):
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="wtb-wal-checkpoint")
                    self._thread.start()

    def stop(self) -> None:
        """End the thread (its engine was disposed); a later commit starts it again."""
        with self._lock:
            self._stopping, thread = True, self._thread
            self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        with self._lock:
            self._stopping = False

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                               isolation_level=None, check_same_thread=False)
        try:
            while self._wake.wait(IDLE_S) and not self._stopping:
                self._wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # busy, say: a later commit wakes us again
                    log.debug("WAL checkpoint of %s failed: %s", self.path, exc)
        finally:
            conn.close()
