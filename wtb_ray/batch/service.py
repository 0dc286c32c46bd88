"""Batch operations that do not care where cells run: submit (persist every cell first),
run a chunk of cells, score them, keep the batch's counts, cancel, delete, and the
leaderboard.

The in-process runner (local.py) and the Ray actors both drive batches through this class,
so a batch gives the same results wherever it runs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wtb_ray.batch import evaluators
from wtb_ray.batch.plan import Cell, check_against, plan_cells
from wtb_ray.batch.spec import BatchSpec, Case
from wtb_ray.batch.stats import CellResult, Row, leaderboard
from wtb_ray.domain import batch as states
from wtb_ray.domain.batch import Batch
from wtb_ray.domain.errors import NotFound
from wtb_ray.domain.execution import Status
from wtb_ray.domain.graph import Workflow
from wtb_ray.engine import group
from wtb_ray.engine.bench import Bench
from wtb_ray.engine.lease import is_held, lease_is_dead
from wtb_ray.engine.loader import load_workflow
from wtb_ray.engine.workspaces import remove_managed
from wtb_ray.storage.batches import Batches
from wtb_ray.storage.rows import dumps
from wtb_ray.storage.store import Change

SPECS_KEPT = 16  # parsed specs a process keeps (one per batch it works on)


@dataclass
class ChunkReport:
    statuses: dict[str, str] = field(default_factory=dict)  # execution id -> status
    skipped: dict[str, str] = field(default_factory=dict)  # execution id -> why


class BatchService:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.batches = Batches(bench.store)
        self._specs: dict[str, BatchSpec] = {}

    # -- submitting -------------------------------------------------------------------

    def submit(self, spec: BatchSpec, batch_id: str | None = None) -> Batch:
        """Check the spec, persist the batch and every one of its cells; run nothing.

        With ``batch_id`` given, submitting again returns the batch already persisted (a
        retried call after a crash does not create it twice).
        """
        if batch_id is not None:
            try:
                existing = self.batches.get(batch_id)
            except NotFound:
                pass
            else:
                self.materialize(existing)
                return existing
        wf = load_workflow(spec.workflow)
        check_against(spec, wf)
        cells = plan_cells(spec)
        # The webhook's secret is kept apart from the spec, which is shown to anyone.
        batch = Batch(name=spec.name or wf.name, workflow_ref=spec.workflow,
                      spec=spec.model_dump(mode="json", exclude={"webhook": {"secret"}}),
                      total=len(cells))
        if batch_id is not None:
            batch.id = batch_id
        self.batches.create(batch, spec.webhook.model_dump() if spec.webhook else None)
        self._create_cells(batch.id, wf, spec, cells)  # all of them: the batch is new
        return batch

    def materialize(self, batch: Batch) -> int:
        """Create the cells that do not exist yet (all of them, or the rest after a crash)."""
        spec = self.spec(batch)
        have = {(c["combo"], c["case"], c["repeat"]) for c in self.batches.cells(batch.id)}
        missing = [c for c in plan_cells(spec) if (c.combo, c.case.id, c.repeat) not in have]
        return self._create_cells(batch.id, load_workflow(spec.workflow), spec, missing)

    def _create_cells(self, batch_id: str, wf: Workflow, spec: BatchSpec,
                      cells: list[Cell]) -> int:
        workspace = {"workspace": True, "workspace_ignore": spec.workspace_ignore} if (
            spec.workspace) else {}
        group.create_many(self.bench, wf, [
            {"input": c.case.input, "variants": c.choice, "labels": c.labels(),
             "batch_id": batch_id, **workspace} for c in cells])
        return len(cells)

    def spec(self, batch: Batch | str) -> BatchSpec:
        """A batch's spec (given the batch, or its id to read it), parsed once per process:
        a spec holds every case, and executors run many chunks of a batch."""
        batch_id = batch if isinstance(batch, str) else batch.id
        spec = self._specs.pop(batch_id, None)  # re-inserted below: most recent last
        if spec is None:
            row = self.batches.get(batch_id) if isinstance(batch, str) else batch
            spec = BatchSpec.model_validate(row.spec)
            while len(self._specs) >= SPECS_KEPT:
                del self._specs[next(iter(self._specs))]
        self._specs[batch_id] = spec
        return spec

    # -- scheduling -------------------------------------------------------------------

    def runnable(self, batch: Batch, *, takeover: bool = False) -> list[dict[str, Any]]:
        """Cells to run now: pending, failed with attempts left, or running with no live
        runner (``takeover``: the caller knows every earlier runner is gone)."""
        max_attempts = self.spec(batch).max_attempts

        def ready(cell: dict[str, Any]) -> bool:
            if cell["status"] == "running":
                return takeover or lease_is_dead(self.bench.store.execution(cell["id"]))
            return cell["status"] == "pending" or (
                cell["status"] == "failed" and cell["attempts"] < max_attempts)

        return [c for c in self.batches.cells(batch.id) if ready(c)]

    def start(self, batch: Batch) -> Batch:
        if batch.status == states.PENDING:
            batch.status, batch.started_at = states.RUNNING, time.time()
            self.batches.save(batch, batch.event("batch.started", total=batch.total))
        return batch

    def run_chunk(self, batch_id: str, execution_ids: list[str], *,
                  takeover: bool = False) -> ChunkReport:
        """Claim, run and score some cells of a batch in this process."""
        spec = self.spec(batch_id)
        runs, skipped = group.run_many(self.bench, execution_ids, takeover=takeover,
                                       timeout_s=spec.timeout_s)
        finished = [r for r in runs if r.ex.status in (Status.COMPLETED, Status.FAILED)]
        self.score(batch_id, [(r.ex.id, r.ex.status.value, r.state.values, r.ex.labels,
                            r.ex.error) for r in finished])
        return ChunkReport({r.ex.id: r.ex.status.value for r in runs}, skipped)

    def score(self, batch_id: str, finished: Iterable[tuple[str, str, dict, dict, Any]]
              ) -> None:
        finished = list(finished)
        if not finished:
            return
        spec = self.spec(batch_id)
        cases = {c.id: c for c in spec.cases}
        totals = self.bench.store.node_totals([f[0] for f in finished])
        rows = []
        for execution_id, status, state, labels, error in finished:
            t = totals[execution_id]
            facts = evaluators.RunFacts(status, round(t["latency_ms"], 3), t["node_count"],
                                        t["usage"])
            scored = evaluators.score(spec.evaluators, state, cases.get(
                labels["case"], Case(id=labels["case"])), facts)
            rows.append({
                "execution_id": execution_id, "batch_id": batch_id, "combo": labels["combo"],
                "case_id": labels["case"], "repeat": labels["repeat"], "status": status,
                "passed": scored.passed, "latency_ms": facts.latency_ms,
                "node_count": facts.node_count, "metrics": scored.metrics,
                "error": f"{error['type']}: {error['message']}" if error else None,
                "evaluated_at": time.time()})
        self.batches.save_results(rows)

    def score_missing(self, batch: Batch) -> int:
        """Score finished cells that have no result: a runner that died between committing
        an execution and scoring it leaves such a gap."""
        have = self.batches.result_ids(batch.id)
        max_attempts = self.spec(batch).max_attempts
        todo = [c for c in self.batches.cells(batch.id) if c["id"] not in have and (
            c["status"] == "completed" or (c["status"] == "failed"
                                          and c["attempts"] >= max_attempts))]
        self.score(batch.id, [(c["id"], c["status"], self.bench.state(c["id"]), c, c["error"])
                           for c in todo])
        return len(todo)

    # -- progress, cancel, finish ---------------------------------------------------------

    def refresh(self, batch: Batch) -> Batch:
        """Recount cells from their executions; finish the batch when nothing is left."""
        return self.tally(batch)[0]

    def tally(self, batch: Batch) -> tuple[Batch, dict[str, dict[str, int]]]:
        """``refresh``, and how many cells of each variant combination are in each state,
        from one read of the cells (the orchestrator's recount while it drives a batch)."""
        cells = self.batches.cells(batch.id)
        max_attempts = self.spec(batch).max_attempts
        counts = Counter(c["status"] for c in cells)
        retryable = sum(1 for c in cells
                        if c["status"] == "failed" and c["attempts"] < max_attempts)
        batch.completed, batch.cancelled = counts["completed"], counts["cancelled"]
        batch.failed = counts["failed"] - retryable
        active = counts["pending"] + counts["running"] + retryable
        if not active and not batch.finished:
            self.score_missing(batch)
            batch.status = (states.CANCELLED if batch.cancel_requested else states.COMPLETED)
            batch.finished_at = time.time()
            self.batches.save(batch, batch.event(
                f"batch.{batch.status}", completed=batch.completed, failed=batch.failed,
                cancelled=batch.cancelled))
        else:
            self.batches.save(batch)
        return batch, _combinations(cells, max_attempts, batch.finished)

    def cancel_requested(self, batch: Batch) -> bool:
        batch.cancel_requested = self.batches.cancel_requested(batch.id)
        return batch.cancel_requested

    def reject(self, batch_id: str, execution_ids: list[str], error_type: str,
               message: str) -> int:
        """Fail cells that cannot run at all (their runtime_env cannot be set up), with no
        attempts left: the batch goes on and finishes, each of them naming the error."""
        attempts = self.spec(batch_id).max_attempts
        changes = []
        for execution_id in execution_ids:
            ex = self.bench.store.execution(execution_id)
            if not ex.can("reject"):
                continue  # it moved on (run, cancelled) meanwhile
            ex.apply("reject")
            error = {"node": None, "type": error_type, "message": message[-4000:],
                     "attempts": attempts}
            changes.append(Change(ex.id, [ex.event("execution.failed",
                                                   error=f"{error_type}: {message[:500]}")],
                                  {"status": ex.status.value, "error": dumps(error),
                                   "attempts": max(ex.attempts, attempts)},
                                  fence_version=ex.version))
        outcomes = self.bench.store.commit_many(changes) if changes else []
        return sum(not isinstance(o, Exception) for o in outcomes)

    def cancel_rest(self, batch: Batch) -> int:
        """Cancel every cell not yet finished: waiting ones at once, running ones at their
        next node boundary."""
        waiting, n = [], 0
        for cell in self.batches.cells(batch.id):
            if cell["status"] in ("pending", "failed", "paused"):
                ex = self.bench.store.execution(cell["id"])
                ex.apply("stop")
                waiting.append(Change(ex.id, [ex.event("execution.cancelled",
                                                       reason="batch cancelled")],
                                      {"status": "cancelled", "lease_owner": None,
                                       "control": None}, fence_version=ex.version))
            elif cell["status"] == "running":
                self.bench.stop(cell["id"])
                n += 1
        self.bench.store.commit_many(waiting)
        return len(waiting) + n

    def progress(self, batch_id: str) -> dict[str, Any]:
        """The batch and, per variant combination, how many cells are in each state."""
        batch = self.batches.get(batch_id)
        return {"batch": batch.to_dict(), "combinations": _combinations(
            self.batches.cells(batch_id), self.spec(batch).max_attempts, batch.finished)}

    def delete(self, batch_id: str) -> tuple[list[str], list[str]]:
        """Delete a finished batch whole (``Batches.delete``) and the workspace directories
        WTB made for its cells. Returns the cells' ids, and what of those directories could
        not be removed and why (``wtb gc`` removes it later)."""
        cells = self.batches.delete(batch_id, may_go=lambda ex: not is_held(ex))
        self._specs.pop(batch_id, None)
        left = [remove_managed(self.bench.settings, cell) for cell in cells]
        return cells, [problem for problem in left if problem is not None]

    # -- results ----------------------------------------------------------------------

    def cell_results(self, batch_id: str) -> list[CellResult]:
        return [CellResult(r["combo"], r["case_id"], r["repeat"], r["status"], r["passed"],
                           r["latency_ms"], r["metrics"])
                for r in self.batches.results(batch_id)]

    def leaderboard(self, batch_id: str) -> list[Row]:
        return leaderboard(self.cell_results(batch_id))


def _combinations(cells: list[dict[str, Any]], max_attempts: int, finished: bool
                  ) -> dict[str, dict[str, int]]:
    """Per variant combination, cells by state (failed ones with attempts left: retrying)."""
    combos: dict[str, dict[str, int]] = {}
    for cell in cells:
        status = cell["status"]
        if status == "failed" and cell["attempts"] < max_attempts and not finished:
            status = "retrying"
        counts = combos.setdefault(cell["combo"], {})
        counts[status] = counts.get(status, 0) + 1
    return combos
