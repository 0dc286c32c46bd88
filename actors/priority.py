"""Batch work yields the CPU to the HTTP API and to interactive work on the same machine.

Ray already starts its workers at niceness 15 (the API's replicas too), so niceness alone
leaves little room below them: 19 is the floor. SCHED_IDLE goes further: the thread runs
only when no normal thread wants the CPU, and still takes every idle cycle. Both are
per-thread settings on Linux, so every thread of the process is changed; threads started
later inherit from the thread that starts them.
"""

from __future__ import annotations

import contextlib
import os


def yield_to_interactive(niceness: int, idle: bool) -> None:
    """Lower this process's CPU priority by ``niceness``, and to SCHED_IDLE if ``idle``."""
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process alone
        threads = [0]
    for tid in threads:
        with contextlib.suppress(OSError, AttributeError):  # gone, or no such call here
            os.setpriority(os.PRIO_PROCESS, tid,
                           min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
        if idle:
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
