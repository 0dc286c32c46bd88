"""`wtb gc` (unreachable blobs, retention) and `wtb delete`."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from wtb_ray.cli.common import DbOpt, JsonOpt, app, err, guarded, open_bench, out
from wtb_ray.domain.errors import BatchNotDeletable, InvalidInput, NotFound
from wtb_ray.engine.workspaces import (
    deleted_leftovers,
    remove_dir,
    remove_managed,
    unfinished_forks,
)


@contextmanager
def _progress():
    """A progress bar on stderr when it is a terminal; the callback the gc functions call."""
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def _parse_before(text: str | None, option: str = "--before") -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidInput(f"{option} expects an ISO date or datetime (2026-01-31, "
                           f"2026-01-31T12:00), got {text!r}") from None


@dataclass
class _Batches:
    deleted: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)  # {id, reason}: not deletable
    cells: int = 0
    not_removed: list[str] = field(default_factory=list)


def _old_batches(bench, cutoff: float | None, dry_run: bool, progress) -> _Batches:
    """Delete (``dry_run``: list) the batches that finished before ``cutoff``, each whole;
    before execution retention and blob collection, which then free what they used."""
    from wtb_ray.batch.service import BatchService
    from wtb_ray.storage.batches import forked

    found = _Batches()
    if cutoff is None:
        return found
    service = BatchService(bench)
    ids = service.batches.finished_before(cutoff)
    for i, batch_id in enumerate(ids):
        if dry_run:
            if forks := service.batches.cell_forks(batch_id):
                found.kept.append({"id": batch_id, "reason": str(forked(batch_id, forks))})
            else:
                found.deleted.append(batch_id)
                found.cells += service.batches.get(batch_id).total
        else:
            try:
                cells, left = service.delete(batch_id)
            except BatchNotDeletable as exc:  # a fork of a cell, or a cell resumed by hand
                found.kept.append({"id": batch_id, "reason": str(exc)})
            except NotFound:  # deleted meanwhile by someone else
                pass
            else:
                found.deleted.append(batch_id)
                found.cells += len(cells)
                found.not_removed += left
        progress("batches", i + 1, len(ids))
    return found


@app.command()
@guarded
def gc(grace: Annotated[float | None, typer.Option(
           "--grace", metavar="SECONDS",
           help="Keep unreachable blobs younger than this (default WTB_GC_GRACE_SECONDS).")
       ] = None,
       keep_last: Annotated[int | None, typer.Option(
           "--keep-last", metavar="N",
           help="Delete finished executions beyond the newest N of each workflow.")] = None,
       before: Annotated[str | None, typer.Option(
           "--before", metavar="DATE",
           help="Delete finished executions that finished before DATE (with --keep-last: "
                "both must hold).")] = None,
       batches_before: Annotated[str | None, typer.Option(
           "--batches-before", metavar="DATE",
           help="Delete, whole, the batches that finished before DATE (keeping, and "
                "saying why, one a fork of its cells depends on).")] = None,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, delete nothing.")
                          ] = False,
       json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Delete blobs no checkpoint reaches; optionally drop old executions first.

    Executions a remaining fork depends on are always kept, and so are batch cells (batches
    are kept whole: --batches-before or `wtb batch delete` deletes finished ones). Also
    removes, under WTB_HOME, the directories of forks whose process died before the fork was
    committed, and what deleting executions could not remove of theirs.
    """
    from wtb_ray.storage import gc as collector

    if keep_last is not None and keep_last < 0:
        raise InvalidInput(f"--keep-last must be >= 0, got {keep_last}")
    if grace is not None and grace < 0:
        raise InvalidInput(f"--grace must be >= 0 seconds, got {grace:g}")
    finished_before = _parse_before(before)
    batches_cutoff = _parse_before(batches_before, "--batches-before")
    with open_bench(db) as bench, _progress() as progress:
        grace_s = bench.settings.gc_grace_seconds if grace is None else grace
        batches = _old_batches(bench, batches_cutoff, dry_run, progress)
        doomed, kept = collector.expired(bench.store, keep_last=keep_last,
                                         finished_before=finished_before)
        # Earlier deletions' leftovers (listed first: one this run leaves is not tried twice).
        deleted_dirs = deleted_leftovers(bench.settings)
        failed: list[str | None] = []  # what could not be removed, and why
        if not dry_run:
            doomed = collector.delete_executions(  # each checked again as it goes
                bench.store, doomed, progress,
                may_go=lambda ex: ex.status.value in collector.FINISHED)
            for ex_id in doomed:  # the rows are gone; the directory WTB made for it too
                failed.append(remove_managed(bench.settings, ex_id))
        report = collector.collect(bench.store, grace_s, dry_run=dry_run, progress=progress)
        leftovers = unfinished_forks(bench.settings, grace_s)
        if not dry_run:
            failed += [remove_dir(path) for path in leftovers + deleted_dirs]
    not_removed = [f for f in failed + batches.not_removed if f is not None]
    result = {"batches_deleted": batches.deleted, "batches_kept": batches.kept,
              "executions_deleted": doomed, "executions_kept_for_forks": kept,
              "grace_seconds": grace_s, **report.to_dict(),
              "unfinished_fork_dirs": [str(p) for p in leftovers],
              "deleted_workspace_dirs": [str(p) for p in deleted_dirs],
              "not_removed": not_removed}
    for problem in not_removed:
        err.print(f"warning: could not remove {problem} (the next `wtb gc` tries again)",
                  highlight=False, markup=False)
    if json_out:
        print(json.dumps(result))
        return
    verb = "would delete" if dry_run else "deleted"
    if batches_cutoff is not None:
        out.print(f"{verb} {len(batches.deleted)} batch(es) with their {batches.cells} "
                  "execution(s)" + (f"; kept {len(batches.kept)}" if batches.kept else ""),
                  highlight=False)
        for kept_batch in batches.kept:
            err.print(f"kept: {kept_batch['reason']}", highlight=False, markup=False)
    out.print(f"{verb} {len(doomed)} execution(s)"
              + (f"; kept {len(kept)} that forks depend on" if kept else ""), highlight=False)
    out.print(f"{verb} {report.deleted} of {report.blobs} blobs ({report.bytes_freed:,} bytes); "
              f"{report.reachable} reachable, {report.kept_in_grace} unreachable but younger "
              f"than {grace_s:g} s", highlight=False)
    if leftovers:
        out.print(f"{verb} {len(leftovers)} directory(ies) of forks that never finished "
                  f"(under {leftovers[0].parent})", highlight=False)
    if deleted_dirs:
        out.print(f"{verb} what was left of {len(deleted_dirs)} deleted execution(s)' "
                  f"directories (under {deleted_dirs[0].parent})", highlight=False)
    if report.missing:
        err.print(f"warning: {report.missing} referenced workspace tree(s) are missing from "
                  "the store", highlight=False)


@app.command()
@guarded
def delete(execution_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Delete an execution and its history; `wtb gc` then frees the blobs only it used."""
    with open_bench(db) as bench:
        left = bench.delete(execution_id)
    if left is not None:
        err.print(f"warning: could not remove all of its workspace directory: {left} "
                  "(`wtb gc` removes the rest)", highlight=False, markup=False)
    if json_out:
        print(json.dumps({"deleted": execution_id, "workspace_not_removed": left}))
    else:
        out.print(f"execution {execution_id} deleted (run `wtb gc` to free its stored data)",
                  highlight=False)
