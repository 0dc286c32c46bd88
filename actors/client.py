"""The driver side: connect to Ray, reach the orchestrator, submit and follow a batch."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import ray

from actors.orchestrator import NAMESPACE, get_or_create
from actors.restart import database_away
from wtb_ray.batch.spec import BatchSpec
from wtb_ray.config import Settings
from wtb_ray.domain.batch import new_batch_id


def connect(address: str | None, *, dashboard: bool = True, num_cpus: int | None = None
            ) -> dict[str, Any]:
    """Join the cluster at ``address`` ("auto" finds a running one), or start a local Ray
    instance when it is None. Returns where the dashboard is, if anywhere."""
    if ray.is_initialized():
        return {}
    if address:
        context = ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    else:
        # Workers of a local instance import the user's workflow modules from here.
        path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
        context = ray.init(address="local", namespace=NAMESPACE, num_cpus=num_cpus,
                           include_dashboard=dashboard, log_to_driver=False,
                           runtime_env={"env_vars": {"PYTHONPATH": path}})
    return {"dashboard_url": getattr(context, "dashboard_url", None) or None}


def submit(spec: BatchSpec, settings: Settings) -> tuple[Any, str]:
    """Give the spec (cases inlined) to the orchestrator; returns it and the batch id."""
    orchestrator = get_or_create(settings)
    batch_id = new_batch_id()  # chosen here, so a retried call cannot create it twice
    ray.get(orchestrator.submit.remote(spec.model_dump(mode="json"), batch_id))
    return orchestrator, batch_id


Outage = Callable[[str, float, "dict[str, Any] | None"], None]


def follow(orchestrator: Any, batch_id: str, on_progress: Callable[[dict[str, Any]], None],
           poll_s: float = 0.5, on_outage: Outage | None = None) -> dict[str, Any]:
    """Report progress until the batch has finished (or only paused cells are left).

    While the orchestrator cannot read the database (each poll then fails after its
    WTB_RECONNECT_SECONDS), the batch goes on without it, so following does too:
    ``on_outage(error, since, last progress)`` is told at every failed poll, until the
    database answers again."""
    last: dict[str, Any] | None = None
    since: float | None = None
    while True:
        try:
            progress = ray.get(orchestrator.wait.remote(batch_id, poll_s))
        except ray.exceptions.RayTaskError as exc:
            if not database_away(exc):
                raise
            since = since or time.time()
            if on_outage is not None:
                on_outage(_first_line(getattr(exc, "cause", None) or exc), since, last)
            time.sleep(poll_s)
            continue
        since, last = None, progress
        on_progress(progress)
        if progress["batch"]["status"] in ("completed", "cancelled") or not progress["driving"]:
            return progress


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
