"""Single executions started over HTTP run as Ray tasks, so the ingress never waits for one.

The ingress checks the request and persists what it can answer for (a 404, a 409, a bad
variant come back on the request); the task then runs the workflow. What changed in between
(another client resumed the run first, a file was edited by hand) makes the task refuse: it
says so in the execution's history and events (``execution.refused``), where the caller who
got a 202 is watching.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from actors.executor import latency_report
from wtb_ray.config import Settings
from wtb_ray.domain.errors import WTBError
from wtb_ray.domain.events import Event
from wtb_ray.engine.bench import Bench

log = logging.getLogger(__name__)


@ray.remote(num_cpus=1, max_retries=0)
def drive(settings: dict[str, Any], action: str, execution_id: str,
          options: dict[str, Any]) -> str:
    """Run ``action`` ("start" or "resume") on an execution; returns its final status."""
    with Bench.open(Settings(**settings)) as bench:
        try:
            if action == "start":
                ex = bench.start(execution_id)
            else:
                ex = bench.resume(execution_id, **options)
        except WTBError as exc:  # it changed since the request was checked
            log.warning("%s of %s did not happen: %s", action, execution_id, exc)
            _refused(bench, Event("execution.refused", execution_id, data={
                "action": action, "reason": str(exc), "error": type(exc).__name__}))
            return f"refused: {exc}"
        _report(settings, bench)
        return ex.status.value


def _refused(bench: Bench, event: Event) -> None:
    """Record the refusal; if even that fails (the execution was deleted meanwhile), the log
    line above is all there is."""
    try:
        bench.store.record(event)
    except Exception:
        log.exception("could not record that %s of %s was refused", event.data["action"],
                      event.execution_id)


def _report(settings: dict[str, Any], bench: Bench) -> None:
    """Hand this run's latency to the orchestrator, which the metrics endpoint reads."""
    try:
        orchestrator = ray.get_actor(settings["orchestrator_name"], namespace="wtb")
    except ValueError:
        return
    orchestrator.record_latency.remote(latency_report(bench))
