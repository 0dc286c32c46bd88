"""SQLite WAL checkpoints on a thread of their own, off the commit path.

By default SQLite checkpoints in the connection whose commit takes the WAL past 1000 pages:
that commit copies the pages back into the database file and fsyncs it. With 8 KiB pages a
node boundary appends ~15 pages, so about one boundary in 70 took ~5 ms instead of ~0.08:
a quarter of all commit time. Here the store's connections have automatic checkpoints off,
and every so many commits wake this thread, which runs a PASSIVE checkpoint while writers go
on. How many: as many as append about CHECKPOINT_FRAMES pages, learnt from what each
checkpoint reports (the WAL's length) and the commits since the last. (Nothing here opens
SQLite's own files: closing any descriptor of a file drops every POSIX lock this process
holds on it, SQLite's included.)

SQLite rewinds the WAL only once a checkpoint has reached its end, which this thread cannot
do while a writer never pauses (each round ends behind the commits made during it). Once a
round finds BEHIND_FRAMES in the WAL, the thread leaves the next checkpoint to the commits:
the next one checkpoints inline, as SQLite itself would have (again at the commit after, if
another connection held the checkpoint lock), and reaches the end with no writer of this
process going on: the next transaction rewinds the WAL. A commit also does it when the
thread lags far behind, so the WAL stays bounded.
(A RESTART checkpoint on the thread would rewind it too, but would block writers for as
long as a reader keeps an old snapshot.) The thread exits after IDLE_S without work.

A round reaches the end of the WAL as it found it, but a commit that began during the round
(a run commits a boundary every few milliseconds; a round of ~1,000 pages takes some tens)
appends after it, started reading while the WAL was not all copied, and so does not rewind
it; then no commit does until the next round, ~1,000 pages later. Each commit on the way
grew the file instead of writing into pages of it written before: a 10 MB workspace
checkpoint's ~60 pages took 0.45-1.9 ms to write instead of 0.3-0.4. So after a round the
thread waits SETTLE_S (for such a commit to land) and runs another, which copies only what
landed, until one finds nothing new (at most CATCH_UP_ROUNDS more): the next commit begins
with the WAL all copied and rewinds it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_FRAMES = 1000  # SQLite's own threshold, on the thread instead of the commit
BEHIND_FRAMES = 2000  # a WAL this long is checkpointed by the next commit itself
MAX_EVERY = 256  # commits between wake-ups at most (small commits)
LAG = 4  # a commit checkpoints itself when the thread is this many wake-ups behind
IDLE_S = 30.0
SETTLE_S = 0.005  # after a round: a commit under way by then has landed (see the top)
CATCH_UP_ROUNDS = 3  # rounds after a round, until one finds nothing new


class WalCheckpointer:
    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # Held by the thread for each of its rounds, and by a commit that checkpoints: such a
        # commit waits for the round in progress instead of finding the checkpoint lock taken
        # (a round that took 80 ms on a slow disk let the WAL grow by 700 pages meanwhile).
        self._round = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._commits = 0  # since the thread last looked (approximate: no lock on the path)
        self._every = 16  # commits between wake-ups, until a checkpoint tells their size
        self._per_commit = 0.0  # WAL frames a commit adds, as the last checkpoint found
        self._behind = False
        self.checkpoints = 0  # run by the thread so far
        self.inline = 0  # run by commits (the WAL too long, or the thread lagging)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def committed(self, conn: sqlite3.Connection) -> None:
        """A write transaction committed on ``conn`` (still the caller's). Never raises:
        the commit stands whatever happens to a checkpoint."""
        self._commits += 1
        if self._behind or self._commits >= LAG * self._every:
            self._commits = 0
            try:
                with self._round:
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:  # the thread takes over again
                log.debug("WAL checkpoint of %s failed: %s", self.path, exc)
                self._behind = False
                return
            # Busy: another process is checkpointing; the next commit tries again, and until
            # one has, this process's thread leaves the checkpoints to the commits.
            self._behind = busy != 0
            self.inline += not busy
        elif self._commits >= self._every:
            self._start()

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
        last = 0  # frames in the WAL at the last checkpoint
        try:
            while self._wake.wait(IDLE_S) and not self._stopping:
                self._wake.clear()
                with self._round:
                    last = self._checkpoint(conn, last)
        finally:
            conn.close()

    @staticmethod
    def _catch_up(conn: sqlite3.Connection, busy: int, frames: int, done: int) -> None:
        """Rounds after a round that found ``frames`` and copied ``done`` of them, until one
        finds no frame added since the last and copies them all (see the top). An error
        ends them: the round before stands."""
        for _ in range(CATCH_UP_ROUNDS):
            if busy or done < 0:  # another process checkpoints, or not in WAL mode
                return
            time.sleep(SETTLE_S)
            try:
                busy, now, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.debug("WAL catch-up checkpoint failed: %s", exc)
                return
            if now <= frames and done == now:  # nothing new (or rewound), all copied
                return
            frames = now

    def _checkpoint(self, conn: sqlite3.Connection, last: int) -> int:
        """One round: a PASSIVE checkpoint, unless the commits have taken over (the WAL was
        found too long); the WAL's length it found (``last`` if none ran)."""
        if self._behind:  # the next commit checkpoints (see committed)
            return last
        commits, self._commits = self._commits, 0
        try:
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # a later commit wakes us again
            log.debug("WAL checkpoint of %s failed: %s", self.path, exc)
            return last
        self._catch_up(conn, busy, frames, done)
        if busy:  # another process is checkpointing
            return last
        self.checkpoints += 1
        if frames < 0:  # not in WAL mode (a -1 row): nothing to learn
            return last
        added = frames - last if frames >= last else frames  # rewound meanwhile
        if commits and added > 0:
            self._per_commit = added / commits
            self._every = max(1, min(MAX_EVERY, int(CHECKPOINT_FRAMES / self._per_commit)))
        # The WAL's length now: what the round found, plus what the commits made during it
        # added (a round can take tens of milliseconds on a slow disk).
        if frames + self._commits * self._per_commit >= BEHIND_FRAMES:
            self._behind = True  # cleared by the commit that checkpoints
        return frames
