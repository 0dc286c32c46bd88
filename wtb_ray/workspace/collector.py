"""Pausing Python's cyclic garbage collector while a workspace is snapshotted or restored.

Both passes allocate a few container objects per file (tree entries, index keys, stat
results) that live until the pass ends and are then freed by reference counting. Collections
during the pass promote them to the oldest generation, and enough of them there triggers a
full collection, which walks every object of the process: in a fork of 200 MB (~1,600
files) one took 30 ms of a 100 ms restore, in every other fork. With the collector paused,
objects freed by the end of the pass never count towards a collection at all; what is
deferred is the collection of garbage cycles other threads make meanwhile, for as long as the
pass lasts (the first snapshot of a large workspace reads all of it).

Pauses nest and may overlap across threads: the collector runs again when the last one ends,
if it was running when the first began.
"""

from __future__ import annotations

import gc
import threading
from typing import Any


class _Pause:
    """A context manager; one shared instance, so that entering allocates nothing (an
    allocation can itself start a collection)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._resume = False  # whether the collector was enabled when the first pause began

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._resume:
                gc.enable()


paused = _Pause()
