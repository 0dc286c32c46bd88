"""The checks. Each reads the database in pages, one short transaction per page, and
returns findings; none changes anything (repairs.py does, when asked)."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from wtb_ray.engine.lease import lease_is_dead
from wtb_ray.integrity.findings import Finding
from wtb_ray.storage import blob_io, codec, gc, integrity_sql

PAGE = 1000
EXECUTIONS_PAGE = 200
COUNTED = ("completed", "failed", "cancelled")


@dataclass
class Context:
    bench: Any  # wtb_ray.engine.bench.Bench
    settings: Any
    now: float
    requeue: Any = None  # see repairs.Requeue

    @property
    def store(self) -> Any:
        return self.bench.store


def expired_leases(ctx: Context) -> list[Finding]:
    found = []
    for ex in ctx.store.run(integrity_sql.running_executions):
        if lease_is_dead(ex, ctx.now):
            gone = (f"its lease ({ex.lease_owner}) expired or its process died"
                    if ex.lease_owner else "it has no lease")
            found.append(Finding("expired_lease", {"execution": ex.id, "batch": ex.batch_id},
                                 f"running at step {ex.step}, but {gone}; attempts so far: "
                                 f"{ex.attempts}"))
    return found


def boundary_checkpoints(ctx: Context) -> list[Finding]:
    found = []
    top = ctx.store.run(integrity_sql.max_id, "node_boundaries")
    for lo in range(0, top, PAGE):
        for r in ctx.store.run(integrity_sql.boundaries_missing_checkpoints, lo, lo + PAGE):
            missing = {name: ref for name, ref, gone in (
                ("entry", r.entry_checkpoint_id, r.entry_missing),
                ("exit", r.exit_checkpoint_id, r.exit_missing)) if gone}
            found.append(Finding(
                "boundary_missing_checkpoint",
                {"boundary": r.id, "execution": r.execution_id, "missing_checkpoints": missing},
                f"node {r.node!r}: " + ", ".join(f"{k} checkpoint {v} does not exist"
                                                 for k, v in missing.items())))
    return found


def expected_audit(boundary: Any, existing: set[int]) -> tuple[str, str, str, int | None]:
    """The audit key a node run writes: (execution, kind, node, checkpoint); the checkpoint
    is None when the boundary's reference to it is gone (then any checkpoint matches)."""
    completed = boundary.status == "completed"
    ref = boundary.exit_checkpoint_id if completed else boundary.entry_checkpoint_id
    return (boundary.execution_id, "node.completed" if completed else "node.failed",
            boundary.node, ref if ref in existing else None)


def unaudited(boundaries: list[Any], audits: list[Any], existing: set[int]) -> list[Any]:
    """The boundaries no audit entry accounts for, each entry accounting for one boundary."""
    pool = Counter((a.execution_id, a.kind, a.node, a.checkpoint_id) for a in audits)
    loose, missing = [], []
    for b in boundaries:
        key = expected_audit(b, existing)
        if key[3] is None:
            loose.append(b)
        elif pool[key] > 0:
            pool[key] -= 1
        else:
            missing.append(b)
    leftover = Counter()
    for (ex, kind, node, _), n in pool.items():
        leftover[(ex, kind, node)] += n
    for b in loose:
        key = expected_audit(b, existing)[:3]
        if leftover[key] > 0:
            leftover[key] -= 1
        else:
            missing.append(b)
    return missing


def boundary_audits(ctx: Context) -> list[Finding]:
    found, after = [], ""
    while True:
        ids = ctx.store.run(integrity_sql.execution_ids_after, after, EXECUTIONS_PAGE)
        if not ids:
            return found
        after = ids[-1]
        # Read together: a node run writes its boundary and its audit entry in one commit.
        boundaries, audits = ctx.store.run(lambda c, i: (integrity_sql.boundaries_of(c, i),
                                                         integrity_sql.node_audits_of(c, i)), ids)
        refs = sorted({b.entry_checkpoint_id for b in boundaries}
                      | {b.exit_checkpoint_id for b in boundaries} - {None})
        existing = ctx.store.run(integrity_sql.existing_checkpoints, refs) if refs else set()
        for b in unaudited(boundaries, audits, existing):
            _, kind, _, checkpoint = expected_audit(b, existing)
            found.append(Finding("boundary_missing_audit",
                                 {"boundary": b.id, "execution": b.execution_id},
                                 f"node {b.node!r} step {b.step} ({b.status}) has no {kind} "
                                 f"audit entry" + (f" for checkpoint {checkpoint}"
                                                   if checkpoint else "")))


def blobs(ctx: Context) -> list[Finding]:
    """Blobs no checkpoint reaches (older than the gc grace period), and blobs checkpoints
    reach that are not stored. One pass, shared with `wtb gc` (storage/gc.py)."""
    cutoff = ctx.now - ctx.settings.gc_grace_seconds
    scan = gc.scan(ctx.store, cutoff)
    found = [Finding("unreachable_blob", {"blob": h},
                     f"{size} bytes that no checkpoint reaches, older than the "
                     f"{ctx.settings.gc_grace_seconds:g} s grace period")
             for h, size in scan.doomed]
    if scan.missing:
        found.extend(_missing_blobs(ctx, scan.missing))
    return found


def _missing_blobs(ctx: Context, missing: set[str]) -> list[Finding]:
    """One finding per missing blob, naming the checkpoints that reach it (those already
    recorded as damaged are left out: they were reported and dealt with before)."""
    damaged = ctx.store.run(integrity_sql.damaged_ids)
    users: dict[str, list[tuple[int, str]]] = defaultdict(list)
    trees: dict[str, frozenset[str]] = {}
    after = 0
    while page := ctx.store.run(integrity_sql.checkpoints_page, after, PAGE):
        after = page[-1].id
        for checkpoint_id, execution_id, manifest, tree in page:
            if checkpoint_id in damaged:
                continue
            gone = {e for e in json.loads(manifest).values() if e in missing}
            if tree:
                gone |= _tree_missing(ctx.store, tree, missing, trees)
            for h in gone:
                users[h].append((checkpoint_id, execution_id))
    return [Finding("checkpoint_missing_blob",
                    {"blob": h, "checkpoints": [c for c, _ in refs],
                     "executions": sorted({e for _, e in refs})},
                    f"blob {h} is not stored; {len(refs)} checkpoint(s) name it")
            for h, refs in sorted(users.items())]


def _tree_missing(store: Any, tree: str, missing: set[str],
                  memo: dict[str, frozenset[str]]) -> frozenset[str]:
    """The missing blobs a workspace tree reaches (subtrees are shared: each is read once)."""
    if tree not in memo:
        if tree in missing:
            memo[tree] = frozenset({tree})
        else:
            data = store.run(blob_io.fetch, [tree]).get(tree)
            gone: set[str] = set() if data is not None else {tree}
            for entry in (codec.decode(data).values() if data is not None else ()):
                if entry[0] == "d":
                    gone |= _tree_missing(store, entry[1], missing, memo)
                elif entry[0] == "f":
                    gone |= set(entry[3]) & missing
            memo[tree] = frozenset(gone)
    return memo[tree]


def batch_counts(ctx: Context) -> list[Finding]:
    """Finished batches only: a running batch's counts are its orchestrator's to keep."""
    found, after = [], ""
    while True:
        page, counts = ctx.store.run(_batches_and_cells, after)
        if not page:
            return found
        after = page[-1].id
        for b in page:
            recorded = {k: getattr(b, k) for k in COUNTED}
            actual = {k: counts[b.id].get(k, 0) for k in COUNTED}
            if recorded != actual:
                found.append(Finding("batch_count_mismatch", {"batch": b.id},
                                     f"recorded {recorded}, its executions: {actual}"))


def _batches_and_cells(conn: Any, after: str) -> tuple[list[Any], dict[str, dict[str, int]]]:
    page = integrity_sql.finished_batches_after(conn, after, PAGE)
    return page, integrity_sql.cell_counts(conn, [b.id for b in page]) if page else {}


def stuck_outbox(ctx: Context) -> list[Finding]:
    found, after = [], 0
    created_before = ctx.now - ctx.settings.outbox_stuck_seconds
    while page := ctx.store.run(integrity_sql.stuck_outbox, created_before, after, PAGE):
        after = page[-1].id
        for r in page:
            waiting = (f"claimed by {r.claimed_by} until {_when(r.available_at)}"
                       if r.claimed_by else f"next try {_when(r.available_at)}")
            found.append(Finding(
                "stuck_outbox", {"outbox": r.id, "event": r.event_id,
                                 "aggregate": f"{r.aggregate_type}:{r.aggregate_id}"},
                f"{r.kind} undelivered for {ctx.now - r.created_at:.0f} s after "
                f"{r.attempts} failed attempt(s); {waiting}"
                + (f"; last error: {r.last_error[:200]}" if r.last_error else "")))
    return found


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
