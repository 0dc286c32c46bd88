"""Garbage collection: blobs no checkpoint reaches, and executions past their retention.

Reachability, not age, decides what is garbage: a blob is kept if any checkpoint's manifest or
workspace tree reaches it. Age only protects writers. Workspace chunks are uploaded before the
checkpoint that references them commits, and a writer that finds a blob already stored does not
write it again, so a blob can be about to become reachable while looking like garbage. Hence:

* only unreachable blobs whose ``created_at`` is older than the grace period are deleted, and
  the DELETE re-checks that age, so a blob refreshed meanwhile survives;
* a writer that finds an existing blob older than BLOB_REFRESH_SECONDS refreshes its
  ``created_at`` (state values in the boundary's upsert, workspace blobs in their upload
  transaction, which also writes again any blob deleted since it looked).

So with a grace period G > BLOB_REFRESH_SECONDS, a blob is never deleted under a writer that
commits its checkpoint within G - BLOB_REFRESH_SECONDS of writing (or finding) the blob. The
hot path pays nothing for this: the refresh is part of the upsert it already does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, delete, func, select

from wtb_ray.domain.execution import Execution
from wtb_ray.storage import blob_io, codec, rows
from wtb_ray.storage.schema import (
    audit_log,
    batch_results,
    blobs,
    checkpoints,
    compensations,
    damaged_checkpoints,
    executions,
    node_boundaries,
    outbox,
    outbox_applied,
)

Progress = Callable[[str, int, int], None]  # (phase, done, total)
FINISHED = ("completed", "failed", "cancelled")
PAGE = 1000


@dataclass
class GcReport:
    blobs: int = 0
    reachable: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    kept_in_grace: int = 0
    missing: int = 0  # referenced but absent: an integrity problem, reported, never "fixed"
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quiet(phase: str, done: int, total: int) -> None:
    pass


def reachable(store: Any, progress: Progress = _quiet) -> tuple[set[str], int]:
    """Every blob hash some checkpoint reaches, and how many referenced trees are missing."""
    total = store.run(lambda c: c.execute(select(func.count()).select_from(checkpoints))
                      .scalar_one())
    found: set[str] = set()
    trees: set[str] = set()
    last, done = 0, 0
    stmt = (select(checkpoints.c.id, checkpoints.c.manifest, checkpoints.c.workspace_tree)
            .order_by(checkpoints.c.id).limit(PAGE))
    while True:
        rows = store.run(lambda c, after: c.execute(stmt.where(checkpoints.c.id > after)).all(),
                         last)
        if not rows:
            break
        for _, manifest, tree in rows:
            found.update(e for e in json.loads(manifest).values() if not codec.is_inline(e))
            if tree:
                trees.add(tree)
        last, done = rows[-1][0], done + len(rows)
        progress("checkpoints", done, total)
    missing = 0
    queue, seen = sorted(trees), set(trees)
    while queue:
        batch, queue = queue[:blob_io.BATCH], queue[blob_io.BATCH:]
        loaded = store.run(blob_io.fetch, batch)
        missing += len(set(batch) - loaded.keys())
        for data in loaded.values():
            for entry in codec.decode(data).values():
                if entry[0] == "d" and entry[1] not in seen:
                    seen.add(entry[1])
                    queue.append(entry[1])
                elif entry[0] == "f":
                    found.update(entry[3])
        progress("trees", len(seen) - len(queue), len(seen))
    return found | seen, missing


@dataclass
class Scan:
    """What one pass over checkpoints and blobs found (collect and the integrity checker)."""

    report: GcReport
    reachable: set[str]
    doomed: list[tuple[str, int]]  # unreachable and older than the cutoff: (hash, size)
    missing: set[str]  # reachable but not stored


def scan(store: Any, cutoff: float, progress: Progress = _quiet) -> Scan:
    """Find the blobs no checkpoint reaches written before ``cutoff``, and the blobs
    checkpoints reach that are not stored. Fix ``cutoff`` before calling (see module doc)."""
    keep, missing = reachable(store, progress)
    report = GcReport(reachable=len(keep), missing=missing)
    doomed: list[tuple[str, int]] = []
    unseen = set(keep)
    last = ""
    stmt = (select(blobs.c.hash, blobs.c.created_at, func.length(blobs.c.data))
            .order_by(blobs.c.hash).limit(PAGE))
    while True:
        rows = store.run(lambda c, after: c.execute(stmt.where(blobs.c.hash > after)).all(), last)
        if not rows:
            break
        for h, created, size in rows:
            report.blobs += 1
            if h in keep:
                unseen.discard(h)
                continue
            if created >= cutoff:
                report.kept_in_grace += 1
            else:
                doomed.append((h, size))
        last = rows[-1][0]
        progress("blobs", report.blobs, report.blobs)
    return Scan(report, keep, doomed, unseen)


def delete_blobs(store: Any, hashes: list[str], cutoff: float) -> list[str]:
    """Delete these blobs if they are still older than ``cutoff``; returns those deleted."""
    gone: list[str] = []
    for i in range(0, len(hashes), blob_io.BATCH):
        gone.extend(store.run(_delete_blobs, hashes[i:i + blob_io.BATCH], cutoff, write=True))
    return gone


def collect(store: Any, grace_seconds: float, *, dry_run: bool = False,
            progress: Progress = _quiet) -> GcReport:
    """Delete the blobs no checkpoint reaches that are older than ``grace_seconds``."""
    cutoff = time.time() - grace_seconds  # fixed before reachability is read
    found = scan(store, cutoff, progress)
    report, doomed = found.report, found.doomed
    report.dry_run = dry_run
    sizes = dict(doomed)
    for i in range(0, len(doomed), blob_io.BATCH):
        batch = [h for h, _ in doomed[i:i + blob_io.BATCH]]
        gone = batch if dry_run else delete_blobs(store, batch, cutoff)
        report.deleted += len(gone)
        report.bytes_freed += sum(sizes[h] for h in gone)
        progress("delete", min(i + blob_io.BATCH, len(doomed)), len(doomed))
    return report


def _delete_blobs(conn: Connection, hashes: list[str], cutoff: float) -> list[str]:
    # The age is checked again here: a writer may have refreshed a blob since it was listed.
    stmt = delete(blobs).where(blobs.c.hash.in_(hashes), blobs.c.created_at < cutoff)
    return [r[0] for r in conn.execute(stmt.returning(blobs.c.hash))]


def expired(store: Any, *, keep_last: int | None = None, finished_before: float | None = None
            ) -> tuple[list[str], list[str]]:
    """Finished executions past retention: beyond the newest ``keep_last`` of their workflow
    and (if given) finished before ``finished_before``. Returns (to delete, kept because a
    fork that stays depends on them)."""
    if keep_last is None and finished_before is None:
        return [], []
    cols = (executions.c.id, executions.c.workflow_name, executions.c.status,
            executions.c.updated_at, executions.c.parent_execution_id)
    # Batch cells are not counted: their batch's results count them, and batches are kept
    # whole.
    rows = store.run(lambda c: c.execute(select(*cols).where(
        executions.c.batch_id.is_(None)).order_by(
        executions.c.created_at.desc(), executions.c.id)).all())
    seen: dict[str, int] = {}
    doomed: set[str] = set()
    for ex_id, workflow, status, updated, _ in rows:
        rank = seen[workflow] = seen.get(workflow, 0) + 1
        if status not in FINISHED:
            continue
        if keep_last is not None and rank <= keep_last:
            continue
        if finished_before is not None and updated >= finished_before:
            continue
        doomed.add(ex_id)
    return _without_fork_parents(doomed, [(r[0], r[4]) for r in rows])


def _without_fork_parents(doomed: set[str], parents: Iterable[tuple[str, str | None]]
                          ) -> tuple[list[str], list[str]]:
    parents = list(parents)
    kept: set[str] = set()
    changed = True
    while changed:  # a kept fork keeps its origin, which keeps its own origin, ...
        changed = False
        for ex_id, parent in parents:
            if parent in doomed and ex_id not in doomed:
                doomed.discard(parent)
                kept.add(parent)
                changed = True
    return sorted(doomed), sorted(kept)


def forks_of(store: Any, execution_id: str) -> list[str]:
    return store.run(lambda c: [r[0] for r in c.execute(
        select(executions.c.id).where(executions.c.parent_execution_id == execution_id))])


def delete_executions(store: Any, ids: list[str], progress: Progress = _quiet, *,
                      may_go: Callable[[Execution], bool] = lambda ex: True) -> list[str]:
    """Delete executions with their checkpoints, node runs, undo actions, audit and outbox
    rows; their blobs stay until ``collect`` finds them unreachable. Returns those deleted.

    What the caller decided from an earlier read is decided again in the deleting
    transaction, on rows no one else can change until it ends (locked on PostgreSQL; SQLite's
    write lock is held from its start): an execution ``may_go`` no longer allows (a pending
    run claimed meanwhile, a finished one rolled back and resumed) or that a fork committed
    meanwhile descends from is left, and not returned."""
    # Newest first (ids sort by creation time): a fork goes in a group before its origin's,
    # which then sees whether the fork went or stayed.
    ids = sorted(ids, reverse=True)
    deleted: list[str] = []
    for i in range(0, len(ids), 100):
        deleted += store.run(_delete_rows, ids[i:i + 100], set(ids[i + 100:]), may_go,
                             write=True)
        progress("executions", min(i + 100, len(ids)), len(ids))
    return deleted


def _delete_rows(conn: Connection, ids: list[str], later: set[str],
                 may_go: Callable[[Execution], bool]) -> list[str]:
    """``later``: the ids a later group of the same deletion takes."""
    locked = conn.execute(select(executions).where(executions.c.id.in_(ids))
                          .order_by(executions.c.id).with_for_update()).all()
    going = {ex.id for ex in map(rows.execution_from_row, locked) if may_go(ex)}
    # A fork that stays keeps its origin (and a kept origin, its own origin); one a later
    # group of this deletion takes does not (made within the same millisecond as its
    # origin, or on a machine whose clock is behind).
    forks = conn.execute(select(executions.c.id, executions.c.parent_execution_id)
                         .where(executions.c.parent_execution_id.in_(going))).all()
    going, _ = _without_fork_parents(going, [(f, None if f in later else p) for f, p in forks])
    if going:
        delete_execution_rows(conn, going)
    return going


def delete_execution_rows(conn: Connection, ids: Collection[str] | Select) -> None:
    """Delete these executions (ids, or a query selecting them) and every row that is theirs
    alone; their blobs stay until ``collect`` finds them unreachable."""
    delete_events(conn, outbox.c.aggregate_type == "execution", outbox.c.aggregate_id.in_(ids))
    for table in (compensations, node_boundaries, audit_log, checkpoints, batch_results,
                  damaged_checkpoints):
        conn.execute(delete(table).where(table.c.execution_id.in_(ids)))
    conn.execute(delete(executions).where(executions.c.id.in_(ids)))


def delete_events(conn: Connection, *where: ColumnElement[bool]) -> None:
    """Delete the outbox events ``where`` selects, with the relay's record of the consumers
    that applied them."""
    events = select(outbox.c.event_id).where(*where)
    conn.execute(delete(outbox_applied).where(outbox_applied.c.event_id.in_(events)))
    conn.execute(delete(outbox).where(*where))
