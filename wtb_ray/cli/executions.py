"""`wtb run|list|show|checkpoints|history|pause|stop|resume|rollback|fork`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wtb_ray import render
from wtb_ray.cli.common import (
    DbOpt,
    JsonOpt,
    PatchOpt,
    VariantOpt,
    app,
    err,
    finish,
    follow,
    guarded,
    interruptible,
    open_bench,
    out,
    parse_json,
    parse_variants,
)
from wtb_ray.domain.errors import InvalidInput
from wtb_ray.domain.execution import Status
from wtb_ray.engine import edits

WorkspaceOpt = Annotated[str | None, typer.Option(
    "--workspace", metavar="DIR",
    help="Track this directory's files with the execution (nodes get it as ctx.workspace).")]


KeepEditsOpt = Annotated[bool, typer.Option(
    "--keep-edits", help="Files changed by hand since the last checkpoint: record them as they "
                         "are (a patch checkpoint) and go on from them.")]
DiscardEditsOpt = Annotated[bool, typer.Option(
    "--discard-edits", help="Files changed by hand since the last checkpoint: put back the "
                            "checkpoint's files over them (the history names what was dropped).")]


def edits_choice(keep: bool, discard: bool) -> str | None:
    if keep and discard:
        raise InvalidInput("--keep-edits and --discard-edits exclude each other")
    return "keep" if keep else "discard" if discard else None


def check_workspace(path: str | None) -> None:
    if path is not None and (not path or (Path(path).exists() and not Path(path).is_dir())):
        raise InvalidInput(f"--workspace {path!r} is not a directory")


@app.command()
@guarded
def run(ref: Annotated[str, typer.Argument(help="Workflow as package.module:attr.")],
        input: Annotated[str, typer.Option("--input", "-i", metavar="JSON",
                                           help="Initial state (JSON object or @file).")] = "{}",
        variant: VariantOpt = None,
        break_before: Annotated[list[str] | None, typer.Option(
            "--break-before", metavar="NODE", help="Pause before NODE runs.")] = None,
        break_after: Annotated[list[str] | None, typer.Option(
            "--break-after", metavar="NODE", help="Pause after NODE runs.")] = None,
        workspace: WorkspaceOpt = None,
        ignore: Annotated[list[str] | None, typer.Option(
            "--ignore", metavar="PATTERN",
            help="Workspace paths not to track (gitignore-style; repeatable).")] = None,
        json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Run a workflow to completion, a breakpoint, a pause request or a failure."""
    from wtb_ray.engine.loader import load_workflow
    from wtb_ray.workspace import IgnoreRules

    data = parse_json(input, "--input")
    choice = parse_variants(variant)
    wf = load_workflow(ref)
    wf.check_choice(choice)  # validate everything before the database is touched
    wf.check_nodes(break_before or [], "--break-before")
    wf.check_nodes(break_after or [], "--break-after")
    if not isinstance(data, dict):
        raise InvalidInput(f"--input must be a JSON object, got {type(data).__name__}")
    if ignore and not workspace:
        raise InvalidInput("--ignore needs --workspace DIR")
    IgnoreRules(ignore or [])
    check_workspace(workspace)
    with open_bench(db) as bench, interruptible(bench):
        follow(bench, json_out)
        ex = bench.run(wf, data, variants=choice, break_before=break_before or [],
                       break_after=break_after or [], workspace=workspace,
                       workspace_ignore=ignore or [])
        finish(bench, ex, json_out)


@app.command("list")
@guarded
def list_executions(
        status: Annotated[str | None, typer.Option(
            help="Only executions in this status (running, paused, failed, ...).")] = None,
        batch: Annotated[str | None, typer.Option(help="Only the cells of this batch.")] = None,
        limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
        json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Executions, newest first: their ids, status and where they were forked from."""
    if status is not None and status not in {s.value for s in Status}:
        raise InvalidInput(f"--status {status!r} is not one of "
                           f"{', '.join(s.value for s in Status)}")
    with open_bench(db) as bench:
        items = bench.store.executions(status=status, batch_id=batch, limit=limit)
    if json_out:
        print(json.dumps({"executions": [ex.to_dict() for ex in items]}, default=str))
    else:
        render.executions(out, items)


@app.command()
@guarded
def show(execution_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """An execution: status, variants, node runs and the state at its head."""
    with open_bench(db) as bench:
        ex = bench.get(execution_id)
        state = bench.state(ex.id)
        boundaries = bench.boundaries(ex.id)
        found = edits.find(bench, ex)  # what a resume or rollback would ask about
        named = found.named(len(found.changes)) if found else []
        if json_out:
            print(json.dumps({"execution": ex.to_dict(), "state": state,
                              "node_runs": [b.to_dict() for b in boundaries],
                              "workspace_edits": named}, default=str))
        else:
            render.execution(out, ex, state, boundaries, named)


@app.command()
@guarded
def checkpoints(execution_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """The checkpoint tree, abandoned branches included."""
    with open_bench(db) as bench:
        ex = bench.get(execution_id)
        items = bench.checkpoints(ex.id)
        if json_out:
            on_branch = render.branch_ids(ex.head_checkpoint_id, {c.id: c for c in items})
            print(json.dumps({"execution_id": ex.id, "head": ex.head_checkpoint_id,
                              "checkpoints": [{**c.to_dict(), "on_branch": c.id in on_branch}
                                              for c in items]}))
        else:
            render.checkpoint_tree(out, ex, items)


@app.command()
@guarded
def history(execution_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """The audit trail of an execution."""
    with open_bench(db) as bench:
        events = bench.history(execution_id)
        if json_out:
            print(json.dumps({"execution_id": execution_id,
                              "events": [e.to_dict() for e in events]}))
        else:
            render.history(out, events)


def _control(action: str, execution_id: str, json_out: bool, db: str | None) -> None:
    with open_bench(db) as bench:
        ex = getattr(bench, action)(execution_id)
        if json_out:
            print(json.dumps({"execution": ex.to_dict()}))
        elif ex.control:
            out.print(f"{action} requested: execution {ex.id} will {action} at its next node "
                      "boundary", highlight=False)
        else:
            out.print(f"execution {ex.id} is {ex.status.value}", highlight=False)


@app.command()
@guarded
def pause(execution_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Pause now, or at the next node boundary if another process is running it."""
    _control("pause", execution_id, json_out, db)


@app.command()
@guarded
def stop(execution_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Cancel for good (fork it to continue); a running one stops at the next boundary."""
    _control("stop", execution_id, json_out, db)


@app.command()
@guarded
def resume(execution_id: str, patch: PatchOpt = None, variant: VariantOpt = None,
           keep_edits: KeepEditsOpt = False, discard_edits: DiscardEditsOpt = False,
           json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Continue a paused or failed execution, optionally patching state or switching variants."""
    data = parse_json(patch, "--patch")
    choice = parse_variants(variant)
    on_edits = edits_choice(keep_edits, discard_edits)
    with open_bench(db) as bench, interruptible(bench):
        follow(bench, json_out)
        ex = bench.resume(execution_id, patch=data, variants=choice, workspace_edits=on_edits)
        finish(bench, ex, json_out)


@app.command()
@guarded
def rollback(execution_id: str,
             to: Annotated[str, typer.Option("--to", metavar="CHECKPOINT_ID|NODE", help=(
                 "A checkpoint id, or a node name: the point just before that node last ran."))],
             discard_edits: DiscardEditsOpt = False,
             json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Move the head back (nothing is deleted) and leave the execution paused there."""
    with open_bench(db) as bench:
        ex = bench.rollback(execution_id, to,
                            workspace_edits=edits_choice(False, discard_edits))
        state = bench.state(ex.id)
        if json_out:
            print(json.dumps({"execution": ex.to_dict(), "state": state}))
        else:
            out.print(f"execution {ex.id} rolled back to checkpoint {ex.head_checkpoint_id} "
                      f"(step {ex.step}); it is paused", highlight=False)
            err.print(f"resume with: wtb resume {ex.id}", highlight=False)


@app.command()
@guarded
def fork(execution_id: str,
         at: Annotated[int | None, typer.Option("--at", metavar="CHECKPOINT_ID",
                                                   help="Default: the execution's head.")] = None,
         patch: PatchOpt = None, variant: VariantOpt = None,
         no_run: Annotated[bool, typer.Option("--no-run", help="Create it paused.")] = False,
         workspace: WorkspaceOpt = None,
         json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Start a new execution from a checkpoint, optionally patched and with other variants.
    A fork of an execution with a workspace gets its own (under WTB_HOME unless --workspace)."""
    data = parse_json(patch, "--patch")
    choice = parse_variants(variant)
    check_workspace(workspace)
    with open_bench(db) as bench, interruptible(bench):
        follow(bench, json_out)
        ex = bench.fork(execution_id, at, patch=data, variants=choice, run=not no_run,
                        workspace=workspace)
        finish(bench, ex, json_out)


