"""Local copies in lanes: plain loops on one to four threads (the restoring thread is one)
that take batches of files (each of one directory, directories in turn, largest files first)
from one queue until it is empty.

A copy is a few system calls, and handing each file to a pool cost more than it saved, while
a few long loops on threads overlap in the kernel; taking batches as they go keeps the lanes
busy when some files take far longer than others (creating one took from 0.06 to 0.5 ms
here). A small restore is one lane, on the calling thread.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wtb_ray.workspace.threads import ProcessThreads

WORKERS = 4
# Local copies: one lane (the calling thread) below TWO_LANES bytes, two below ALL_LANES,
# else WORKERS; never more lanes than CPUs this process may use. Measured on 2 cores: 2
# threads copy 10 MB in 85 files ~20% faster than one and 3 slower than 2; at 200 MB, 2 and 4
# lanes did about as well (0.35-0.85x `cp -r` and 0.71-0.78x over a few runs, one lane
# 1.35x), while 4 threads on 2 CPUs can wait on kernel locks a descheduled thread holds. Each
# file also counts as FILE_BYTES: creating one costs about as much as copying that many
# bytes. A lane takes BATCH_BYTES' worth of files at a time.
TWO_LANES, ALL_LANES = 2 << 20, 64 << 20
FILE_BYTES = 32 << 10
BATCH_BYTES = 1 << 20
Write = tuple[str, str, list[Any]]  # (path, path in the workspace, tree entry)
# How a local source can supply a file: (its path there, the stat key its index vouches for,
# or else the quick fingerprints its index recorded when it was too recent to vouch for).
Source = tuple[str, Any, list[str] | None]
Copy = tuple[Write, list[Source]]
_threads = ProcessThreads(WORKERS, "wtb-restore")


def workers() -> ThreadPoolExecutor:
    """The process's restore threads (a fork or rollback should not pay for starting
    threads)."""
    return _threads.get()


def plan(groups: list[list[Copy]]) -> tuple[deque[list[Copy]], int]:
    """The copies of each directory (``groups``: one list per directory, as a restore finds
    them) in batches of about BATCH_BYTES, largest files first, taken from the directories
    in turn, and how many lanes should take them. Lanes take batches one after another, so
    at any time they create files in different directories: creating files in one directory
    from two threads at once serialises on its lock (two lanes in one directory were slower
    than one here, two in different ones faster)."""
    def cost(c: Copy) -> int:
        return c[0][2][2] + FILE_BYTES

    turns: list[list[list[Copy]]] = []
    total = 0
    for copies in groups:
        batches: list[list[Copy]] = [[]]
        filled = 0
        for c in sorted(copies, key=cost, reverse=True):
            if filled >= BATCH_BYTES:
                batches.append([])
                filled = 0
            n = cost(c)
            batches[-1].append(c)
            filled += n
            total += n
        if batches[0]:
            turns.append(batches)
    count = 1 if total < TWO_LANES else min(_cpus(), 2 if total < ALL_LANES else WORKERS)
    queue: deque[list[Copy]] = deque()
    turns.sort(key=len, reverse=True)
    for i in range(len(turns[0]) if turns else 0):
        queue.extend(batches[i] for batches in turns if i < len(batches))
    return queue, count


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


