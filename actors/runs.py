"""Single executions started over HTTP run as Ray tasks, so the ingress never waits for one.

The ingress checks the request and persists what it can answer for (a 404, a 409, a bad
variant come back on the request); the task then runs the workflow.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from actors.executor import latency_report
from wtb_ray.config import Settings
from wtb_ray.domain.errors import WTBError
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
        except WTBError as exc:  # it changed since the request was checked: say so, quietly
            log.warning("%s of %s did not happen: %s", action, execution_id, exc)
            return f"refused: {exc}"
        _report(settings, bench)
        return ex.status.value


def _report(settings: dict[str, Any], bench: Bench) -> None:
    """Hand this run's latency to the orchestrator, which the metrics endpoint reads."""
    try:
        orchestrator = ray.get_actor(settings["orchestrator_name"], namespace="wtb")
    except ValueError:
        return
    orchestrator.record_latency.remote(latency_report(bench))
