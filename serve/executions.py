"""/v1/executions: start one run, list them, read one (its checkpoints, its workspace files)
and control it (pause, stop, resume, rollback, fork, delete). Runs happen in Ray tasks; what the
caller can get wrong is answered on the request."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from actors.runs import drive
from serve.checks import check_choice, check_nodes
from serve.context import Api, BadField, Ctx
from serve.models import (
    ExecutionIn,
    ForkIn,
    IdPath,
    IdQuery,
    ResumeIn,
    RollbackIn,
    RowIdQuery,
)
from serve.paging import Limit, Offset, PathsLimit, next_page
from wtb_ray.domain.errors import InvalidInput, InvalidTransition
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.engine import edits
from wtb_ray.engine.lease import lease_is_dead
from wtb_ray.engine.state import as_state
from wtb_ray.render import branch_ids

router = APIRouter(prefix="/v1/executions", tags=["executions"])


def follow_up(*operations: str) -> dict:
    """OpenAPI links from a response carrying an execution to what can be done with it."""
    return {"links": {op: {"operationId": f"{op}_v1_executions__execution_id_{suffix}",
                           "parameters": {"execution_id": "$response.body#/execution/id"}}
                      for op, suffix in (("show", "_get"), ("checkpoints", "_checkpoints_get"),
                                         ("files", "_files_get"),
                                         ("pause", "_pause_post"), ("stop", "_stop_post"),
                                         ("resume", "_resume_post"),
                                         ("rollback", "_rollback_post"), ("fork", "_fork_post"),
                                         ("delete", "_delete"))
                      if op in operations}}


ALL = ("show", "checkpoints", "files", "pause", "stop", "resume", "rollback", "fork", "delete")


def view(request: Request, ex: Execution) -> dict[str, Any]:
    base = f"{str(request.base_url).rstrip('/')}/v1/executions/{ex.id}"
    links = {"self": base, "checkpoints": f"{base}/checkpoints",
             "events": f"{str(request.base_url).rstrip('/')}/v1/events?execution_id={ex.id}"}
    if ex.workspace:
        links["files"] = f"{base}/files"
    return {"execution": ex.to_dict(), "links": links}


def run_in_cluster(ctx: Api, action: str, execution_id: str, **options: Any) -> None:
    drive.remote(ctx.settings.for_actors(), action, execution_id, options)


@router.post("", status_code=202, responses={202: follow_up(*ALL)})
def start(ctx: Ctx, body: ExecutionIn, request: Request) -> dict[str, Any]:
    """Create the execution (checked, persisted) and run it on the cluster."""
    workflow = ctx.workflow(body.workflow)
    check_choice(workflow, body.variants, "variants")
    check_nodes(workflow, body.break_before, "break_before")
    check_nodes(workflow, body.break_after, "break_after")
    ex = ctx.bench.create(workflow, body.input, variants=body.variants,
                          break_before=body.break_before, break_after=body.break_after,
                          labels=body.labels, workspace=body.workspace or None,
                          workspace_ignore=body.workspace_ignore)
    run_in_cluster(ctx, "start", ex.id)
    return view(request, ex)


@router.get("")
def list_executions(ctx: Ctx, request: Request, limit: Limit = 50, offset: Offset = 0,
                    status: Annotated[Status | None, Query()] = None,
                    batch_id: IdQuery = None
                    ) -> dict[str, Any]:
    """Executions, newest first."""
    page = ctx.bench.store.executions(status=status.value if status else None,
                                      batch_id=batch_id, limit=limit, offset=offset)
    return {"executions": [ex.to_dict() for ex in page], "limit": limit, "offset": offset,
            "next": next_page(request.url, len(page), limit, offset)}


@router.get("/{execution_id}")
def show(ctx: Ctx, execution_id: IdPath, request: Request) -> dict[str, Any]:
    """The execution, its state, its node runs and, as `wtb show --json` gives them, the
    changes made by hand to its workspace that a start, resume or rollback would ask about
    (a look at the directory where this server runs: files the stat index vouches for are
    not read)."""
    ex = ctx.bench.get(execution_id)
    found = edits.find(ctx.bench, ex)
    return {**view(request, ex), "state": ctx.bench.state(ex.id),
            "node_runs": [b.to_dict() for b in ctx.bench.boundaries(ex.id)],
            "workspace_edits": found.named(len(found.changes)) if found else []}


@router.get("/{execution_id}/checkpoints")
def checkpoints(ctx: Ctx, execution_id: IdPath) -> dict[str, Any]:
    ex = ctx.bench.get(execution_id)
    items = ctx.bench.checkpoints(ex.id)
    on_branch = branch_ids(ex.head_checkpoint_id, {c.id: c for c in items})
    return {"execution_id": ex.id, "head": ex.head_checkpoint_id,
            "checkpoints": [{**c.to_dict(), "on_branch": c.id in on_branch} for c in items]}


@router.get("/{execution_id}/files")
def files(ctx: Ctx, execution_id: IdPath, request: Request, at: RowIdQuery = None,
          limit: PathsLimit = 1000, offset: Offset = 0) -> dict[str, Any]:
    """The workspace files recorded at checkpoint ``at`` (default: the head), as `wtb files
    --json` prints them, a page at a time (parents before their contents, names sorted)."""
    ex = ctx.bench.get(execution_id)
    checkpoint = ex.head_checkpoint_id if at is None else at
    try:
        items = ctx.bench.files(ex.id, checkpoint, offset=offset, limit=limit)
    except InvalidInput as exc:
        if not ex.workspace:  # about the execution, not a field of the request
            raise
        raise BadField("at", str(exc)) from None  # a checkpoint of another execution
    return {"execution_id": ex.id, "checkpoint_id": checkpoint,
            "workspace": ex.workspace["path"], "files": items, "limit": limit, "offset": offset,
            # The next page names the checkpoint: the head may move in between.
            "next": next_page(request.url.include_query_params(at=checkpoint), len(items),
                              limit, offset)}


@router.post("/{execution_id}/pause")
def pause(ctx: Ctx, execution_id: IdPath, request: Request) -> dict[str, Any]:
    return view(request, ctx.bench.pause(execution_id))


@router.post("/{execution_id}/stop")
def stop(ctx: Ctx, execution_id: IdPath, request: Request) -> dict[str, Any]:
    return view(request, ctx.bench.stop(execution_id))


@router.post("/{execution_id}/resume", status_code=202)
def resume(ctx: Ctx, execution_id: IdPath, body: ResumeIn, request: Request) -> dict[str, Any]:
    """Checked here (the state allows it, the variants exist, the patch is an object), then
    resumed on the cluster."""
    ex = ctx.bench.get(execution_id)
    if ex.status is Status.RUNNING and not lease_is_dead(ex):
        raise InvalidTransition(ex.id, ex.status.value, "resume", "it is already running")
    if ex.status is not Status.RUNNING:
        ex.check("resume")
    check_choice(ctx.bench.workflow_for(ex), body.variants, "variants")
    patch = as_state(body.patch, "patch") if body.patch is not None else None
    if body.workspace_edits is None:  # refused here (409) rather than quietly on the cluster
        edits.settle(ctx.bench, ex, "resume", None)
    run_in_cluster(ctx, "resume", ex.id, patch=patch, variants=body.variants,
                   workspace_edits=body.workspace_edits)
    return view(request, ex)


@router.post("/{execution_id}/rollback")
def rollback(ctx: Ctx, execution_id: IdPath, body: RollbackIn, request: Request) -> dict[str, Any]:
    try:
        ex = ctx.bench.rollback(execution_id, body.to, workspace_edits=body.workspace_edits)
    except InvalidInput as exc:  # the target: a node that never ran, or not on this branch
        raise BadField("to", str(exc)) from None
    return {**view(request, ex), "state": ctx.bench.state(ex.id)}


@router.delete("/{execution_id}")
def delete(ctx: Ctx, execution_id: IdPath) -> dict[str, Any]:
    """Delete the execution and its history, as `wtb delete` does: not while it runs (409),
    nor while a fork of it exists (409, naming the forks). A workspace directory the server
    made for it goes now; its stored files go at the next `wtb gc`, unless another execution
    shares them."""
    left = ctx.bench.delete(execution_id)
    return {"deleted": execution_id, "workspace_not_removed": left}


@router.post("/{execution_id}/fork", status_code=202, responses={202: follow_up(*ALL)})
def fork(ctx: Ctx, execution_id: IdPath, body: ForkIn, request: Request) -> dict[str, Any]:
    """The fork is created here (paused at its first checkpoint), then run on the cluster."""
    check_choice(ctx.bench.workflow_for(ctx.bench.get(execution_id)), body.variants, "variants")
    ex = ctx.bench.fork(execution_id, body.at, patch=body.patch, variants=body.variants,
                        run=False)
    if body.run:
        run_in_cluster(ctx, "resume", ex.id)
    return view(request, ex)
