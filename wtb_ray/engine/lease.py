"""Leases: which process runs an execution, and whether that process is still alive."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from wtb_ray.domain.execution import Execution, Status

log = logging.getLogger(__name__)


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_is_dead(ex: Execution, now: float | None = None) -> bool:
    """True if the execution's runner is gone: its lease expired, or its process on this
    host has exited (so a crash is recovered at once rather than after the lease)."""
    if ex.lease_owner is None:
        return True
    if ex.lease_expires_at is not None and ex.lease_expires_at < (now or time.time()):
        return True
    host, _, rest = ex.lease_owner.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def is_held(ex: Execution) -> bool:
    """A live process is running it (or rolling it back)."""
    return ex.status in (Status.RUNNING, Status.ROLLING_BACK) and not lease_is_dead(ex)


class LeaseKeeper:
    """Renews the leases of the executions this process is running while a node runs long.

    Node boundaries renew the lease as part of their commit; this thread covers nodes that
    run longer than a third of the lease. It starts on first use.
    """

    def __init__(self, store, owner: str, lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def holds(self, execution_id: str) -> bool:
        return execution_id in self._active

    @contextmanager
    def hold(self, execution_ids: list[str]) -> Iterator[None]:
        with self._lock:
            self._active.update(execution_ids)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="wtb-lease", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._active.difference_update(execution_ids)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            ids = list(self._active)
            if not ids:
                continue
            try:
                self.store.renew_leases(self.owner, ids, time.time() + self.lease_seconds)
            except Exception:  # the next boundary's commit retries the connection anyway
                log.warning("lease renewal failed", exc_info=True)

    def close(self) -> None:
        self._stop.set()
