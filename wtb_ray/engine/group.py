"""Many executions at once: create them in one transaction, claim them, drive them together.

A batch persists every cell before running any (``create_many``), then hands chunks of cells
to workers, which claim them (start, retry a failure, or take over from a dead runner) and
drive them in lockstep with group commits (``run_many``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from wtb_ray.domain.errors import ConcurrencyConflict
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.domain.graph import Workflow
from wtb_ray.engine import creation
from wtb_ray.engine.bench import Bench
from wtb_ray.engine.lease import lease_is_dead
from wtb_ray.engine.runner import Run
from wtb_ray.storage import queries

CREATE_CHUNK = 500  # executions per transaction when a batch is persisted


def create_many(bench: Bench, wf: Workflow, items: Sequence[Mapping[str, Any]]
                ) -> list[Execution]:
    """Persist pending executions; each item holds ``input`` and ``creation.prepare`` options."""
    created: list[Execution] = []
    for start in range(0, len(items), CREATE_CHUNK):
        prepared = [creation.prepare(bench, wf, item.get("input"),
                                     **{k: v for k, v in item.items() if k != "input"})
                    for item in items[start:start + CREATE_CHUNK]]
        outcomes = bench.store.commit_many([change for _, change, _, _ in prepared])
        for (ex, *_), committed in zip(prepared, outcomes, strict=True):
            bench.created(ex, committed)
            created.append(ex)
    return created


def claim_action(ex: Execution, *, takeover: bool) -> str | None:
    """How this process can take ``ex`` to run it now, or None if it should not run."""
    if ex.status is Status.PENDING:
        return "start"
    if ex.status is Status.FAILED:
        return "resume"
    if ex.status is Status.RUNNING and (takeover or lease_is_dead(ex)):
        return "recover"
    return None


def claim_many(bench: Bench, execution_ids: Sequence[str], *, takeover: bool = False,
               timeout_s: float | None = None) -> tuple[list[Run], dict[str, str]]:
    """Claim the runnable executions in one transaction.

    ``takeover`` recovers executions marked running even if their lease looks alive (the
    caller knows their runner died). Returns the runs and, for the rest, why they were skipped.
    """
    planned, skipped = [], {}
    for ex, loaded in bench.store.run(queries.heads, list(execution_ids)):
        execution_id = ex.id
        action = claim_action(ex, takeover=takeover)
        if action is None:
            skipped[execution_id] = ex.status.value
            continue
        data = {"previous_owner": ex.lease_owner} if action == "recover" else {}
        kind = {"start": "execution.started", "resume": "execution.resumed",
                "recover": "execution.recovered"}[action]
        deadline = time.time() + timeout_s if timeout_s else None
        planned.append(bench.claim_change(ex, action, bench.workflow_for(ex),
                                          [ex.event(kind, **data)], deadline=deadline,
                                          loaded=loaded))
    runs = []
    outcomes = bench.store.commit_many([change for change, _ in planned])
    for (change, to_run), outcome in zip(planned, outcomes, strict=True):
        if isinstance(outcome, ConcurrencyConflict):
            skipped[change.execution_id] = f"taken by another process: {outcome}"
        else:
            runs.append(to_run(outcome))
    return runs, skipped


def run_many(bench: Bench, execution_ids: Sequence[str], *, takeover: bool = False,
             timeout_s: float | None = None) -> tuple[list[Run], dict[str, str]]:
    """Claim and drive a group of executions to completion, pause or failure."""
    runs, skipped = claim_many(bench, execution_ids, takeover=takeover, timeout_s=timeout_s)
    bench.runner.drive_group(runs)
    for run in runs:
        if run.lost is not None:
            skipped[run.ex.id] = f"lost to another process: {run.lost}"
    return [r for r in runs if r.lost is None], skipped

