"""Telling a database outage from other errors, and opening the database in the
constructor of an actor Ray restarts (the orchestrator, the outbox relay, the integrity
cron) or one the orchestrator starts (an executor)."""

from __future__ import annotations

import logging
import math
import time

import ray
from sqlalchemy.exc import InterfaceError, OperationalError

from wtb_ray.config import Settings
from wtb_ray.domain.errors import StorageError
from wtb_ray.engine.bench import Bench

log = logging.getLogger(__name__)
REOPEN_S = 2.0  # a waiting actor tries the database this often until it answers


def database_away(exc: BaseException) -> bool:
    """Whether an error (or, from a Ray call, the remote error it carries) is the database
    not answering (connection refused or dropped, retried for WTB_RECONNECT_SECONDS), not
    a fault of the work itself."""
    cause = getattr(exc, "cause", None) or exc
    return isinstance(cause, (OperationalError, InterfaceError))


def open_bench(settings: Settings, wait_s: float = 0.0) -> Bench:
    """The actor's database. Restarted by Ray after a crash, the actor waits for it however
    long it is away: Ray never restarts an actor whose constructor raised (the orchestrator's
    batches would have no one to finish them). Created afresh, it waits up to ``wait_s``
    (0: it fails at once, and a wrong URL is for its caller to hear of)."""
    restarted = ray.get_runtime_context().was_current_actor_reconstructed
    deadline = math.inf if restarted else time.monotonic() + wait_s
    since = None
    while True:
        try:
            bench = Bench.open(settings)
            if since is not None:
                log.warning("the database answered after %.0f s", time.monotonic() - since)
            return bench
        except StorageError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or not database_away(exc.__cause__ or exc):
                raise
            if since is None:
                since = time.monotonic()
                log.error("started with the database away (%s); trying every %.0f s%s", exc,
                          REOPEN_S, "" if restarted else f" for up to {left:.0f} s")
            time.sleep(min(REOPEN_S, left))
