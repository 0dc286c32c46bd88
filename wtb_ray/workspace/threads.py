"""Thread pools a process starts once, on first use, and again in a child process (which
inherits none of its parent's threads): a restore or a pause should not pay for starting
threads."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor


class ProcessThreads:
    def __init__(self, workers: int, name: str) -> None:
        self.workers = workers
        self.name = name
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        self._lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool[0] != os.getpid():
                self._pool = (os.getpid(), ThreadPoolExecutor(self.workers,
                                                              thread_name_prefix=self.name))
            return self._pool[1]
