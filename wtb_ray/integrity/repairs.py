"""Repairs, one per kind of finding. Each takes the findings of its kind, changes the
database in short transactions of its own, and records on each finding what it did.

Executions whose runner is gone are recovered through the engine's own path: the same claim
(``group.claim_many``: "recover" when ``lease_is_dead``) and drive that `wtb resume` and the
batch orchestrator use, from the execution's last checkpoint. Where that happens is the
caller's choice (``Requeue``): here in this process (the CLI), or on the Ray cluster (the
integrity cron actor hands batch cells to the orchestrator and the rest to Ray tasks).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from wtb_ray.batch.service import BatchService
from wtb_ray.domain.errors import ConcurrencyConflict, NotFound
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.engine import group
from wtb_ray.engine.lease import lease_is_dead
from wtb_ray.engine.runner import RELEASE
from wtb_ray.integrity import checks
from wtb_ray.integrity.checks import Context
from wtb_ray.integrity.findings import Finding
from wtb_ray.storage import blob_io, gc, integrity_sql
from wtb_ray.storage.batches import Batches
from wtb_ray.storage.rows import dumps
from wtb_ray.storage.store import Change

# Takes executions to recover; returns, per execution id, what became of it.
Requeue = Callable[[list[Execution]], dict[str, str]]


def requeue_here(bench: Any) -> Requeue:
    """Recover the executions in this process, as `wtb resume` would (batch cells through the
    batch service, so they are scored too)."""
    def requeue(executions: list[Execution]) -> dict[str, str]:
        service = BatchService(bench)
        heads = {ex.id: ex.head_checkpoint_id for ex in executions}
        by_batch: dict[str | None, list[str]] = defaultdict(list)
        for ex in executions:
            by_batch[ex.batch_id].append(ex.id)
        statuses: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for batch_id, ids in by_batch.items():
            batch = _batch_or_none(service, batch_id)
            if batch is not None:
                report = service.run_chunk(batch.id, ids)
                statuses.update(report.statuses)
                skipped.update(report.skipped)
            else:
                runs, why = group.run_many(bench, ids)
                statuses.update({r.ex.id: r.ex.status.value for r in runs})
                skipped.update(why)
        return {i: (f"recovered here from checkpoint {heads[i]}; now {statuses[i]}"
                    if i in statuses else f"not recovered: {skipped.get(i, 'unknown')}")
                for i in heads}

    return requeue


def _batch_or_none(service: Any, batch_id: str | None) -> Any:
    if batch_id is None:
        return None
    try:
        return service.batches.get(batch_id)
    except NotFound:
        return None


def max_attempts(ctx: Context, ex: Execution) -> int:
    """A batch cell gets its spec's max_attempts; any other execution the configured one."""
    if ex.batch_id:
        try:
            return int(Batches(ctx.store).get(ex.batch_id).spec.get("max_attempts", 3))
        except NotFound:
            pass
    return ctx.settings.integrity_max_attempts


def expired_leases(ctx: Context, findings: list[Finding]) -> None:
    to_requeue: list[tuple[Finding, Execution]] = []
    for f in findings:
        ex = ctx.store.execution(f.ids["execution"])
        if ex.status is not Status.RUNNING or not lease_is_dead(ex):
            f.fixed(f"nothing to do: it is now {ex.status.value}"
                    + (f", leased by {ex.lease_owner}" if ex.lease_owner else ""))
        elif ex.attempts >= (limit := max_attempts(ctx, ex)):
            _fail(ctx, f, ex, limit)
        else:
            to_requeue.append((f, ex))
    if to_requeue:
        outcomes = ctx.requeue([ex for _, ex in to_requeue])
        for f, ex in to_requeue:
            outcome = outcomes.get(ex.id, "not recovered")
            (f.not_fixed if outcome.startswith("not ") else f.fixed)(outcome)


def _fail(ctx: Context, f: Finding, ex: Execution, limit: int) -> None:
    message = (f"its runner was lost on attempt {ex.attempts} (at most {limit}; lease "
               f"{ex.lease_owner or 'none'}); failed by the integrity checker")
    error = {"node": None, "type": "RunnerLost", "message": message, "attempts": ex.attempts}
    ex.apply("fail")
    try:
        ctx.store.commit(Change(ex.id, [ex.event(
            "execution.failed", None, ex.head_checkpoint_id, error=f"RunnerLost: {message}")],
            {"status": Status.FAILED.value, "error": dumps(error), **RELEASE},
            fence_version=ex.version))
    except ConcurrencyConflict as exc:
        f.not_fixed(f"not failed: it changed meanwhile ({exc})")
        return
    f.fixed(f"failed after {ex.attempts} attempt(s) (at most {limit}); resume or fork it "
            "to go on")


def boundary_checkpoints(ctx: Context, findings: list[Finding]) -> None:
    for f in findings:
        cleared = [name for name, ref in f.ids["missing_checkpoints"].items()
                   if ctx.store.run(integrity_sql.detach_boundary, f.ids["boundary"],
                                    f"{name}_checkpoint_id", ref, write=True)]
        f.fixed(f"cleared the {' and '.join(cleared)} reference(s)" if cleared
                else "nothing to do: the reference changed or the checkpoint exists")


def boundary_audits(ctx: Context, findings: list[Finding]) -> None:
    for f in findings:
        added = ctx.store.run(_audit_again, f.ids["execution"], f.ids["boundary"], write=True)
        f.fixed("audit entry written from the boundary" if added
                else "nothing to do: it has its audit entry now")


def _audit_again(conn: Any, execution_id: str, boundary_id: int) -> bool:
    """Write the boundary's audit entry if it still lacks one: a finding that another
    checker run repaired since this one looked is not written twice."""
    boundaries = integrity_sql.boundaries_of(conn, [execution_id])
    refs = sorted({b.entry_checkpoint_id for b in boundaries}
                  | {b.exit_checkpoint_id for b in boundaries} - {None})
    existing = integrity_sql.existing_checkpoints(conn, refs) if refs else set()
    lacking = checks.unaudited(boundaries, integrity_sql.node_audits_of(conn, [execution_id]),
                               existing)
    b = next((b for b in lacking if b.id == boundary_id), None)
    if b is None:
        return False
    _, kind, node, checkpoint = checks.expected_audit(b, existing)
    detail = {"step": b.step, "variant": b.variant, "reconstructed": "integrity checker"}
    if b.error:
        detail["error"] = b.error
    integrity_sql.add_audit(conn, {"execution_id": execution_id, "kind": kind, "node": node,
                                   "checkpoint_id": checkpoint, "detail": dumps(detail),
                                   "at": b.started_at + b.duration_ms / 1000})
    return True


def missing_blobs(ctx: Context, findings: list[Finding]) -> None:
    now = time.time()
    for f in findings:
        if ctx.store.run(blob_io.existing, [f.ids["blob"]]):
            f.fixed("nothing to do: the blob is stored again")
            continue
        ctx.store.run(integrity_sql.mark_damaged, [
            {"checkpoint_id": c, "execution_id": e, "reason": f"blob {f.ids['blob']} missing",
             "found_at": now}
            for c, e in _checkpoint_executions(ctx, f.ids["checkpoints"])], write=True)
        f.fixed(f"checkpoint(s) {', '.join(map(str, f.ids['checkpoints']))} recorded as "
                "damaged: their state cannot be loaded; roll back or fork from an earlier one")


def _checkpoint_executions(ctx: Context, ids: list[int]) -> list[tuple[int, str]]:
    return [(c.id, c.execution_id) for c in (ctx.store.checkpoint(i) for i in ids)]


def unreachable_blobs(ctx: Context, findings: list[Finding]) -> None:
    cutoff = ctx.now - ctx.settings.gc_grace_seconds  # the cutoff the check used
    gone = set(gc.delete_blobs(ctx.store, [f.ids["blob"] for f in findings], cutoff))
    for f in findings:
        if f.ids["blob"] in gone:
            f.fixed("collected")
        else:
            f.fixed("nothing to do: it was refreshed or deleted since the check")


def batch_counts(ctx: Context, findings: list[Finding]) -> None:
    for f in findings:
        counts = ctx.store.run(_recount, f.ids["batch"], write=True)
        f.fixed(f"recounted from its executions: {counts}")


def _recount(conn: Any, batch_id: str) -> dict[str, int]:
    found = integrity_sql.cell_counts(conn, [batch_id])[batch_id]
    counts = {k: found.get(k, 0) for k in checks.COUNTED}
    integrity_sql.set_batch_counts(conn, batch_id, counts, time.time())
    return counts


def stuck_outbox(ctx: Context, findings: list[Finding]) -> None:
    """Release what holds a stuck event back (a claim no live relay has, a retry's backoff);
    an event nothing holds back means no relay is delivering: that is not repaired here."""
    held: dict[int, str] = {}
    ids = [f.ids["outbox"] for f in findings]
    for i in range(0, len(ids), 500):
        now = time.time()
        held.update(ctx.store.run(integrity_sql.release_outbox, ids[i:i + 500], now,
                                  now + ctx.settings.outbox_claim_seconds, write=True))
    for f in findings:
        why = held[f.ids["outbox"]]
        if why == "claim":
            f.fixed("released a claim no relay holds any more: the relay delivers it next")
        elif why == "backoff":
            f.fixed("its next retry brought forward to now")
        elif why == "gone":
            f.fixed("nothing to do: it was delivered meanwhile")
        elif why == "live":
            f.not_fixed("left alone: a relay is delivering it right now")
        else:
            f.not_fixed("nothing holds it back: no relay is delivering (start one: "
                        "`wtb outbox relay`, or the OutboxRelay actor)")
