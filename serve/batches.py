"""/v1/batches: submit (answers at once; the orchestrator runs it), list, status, results,
cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from serve.checks import check_matrix
from serve.context import BadField, Ctx
from serve.models import BatchIn, IdPath
from serve.paging import Limit, Offset, next_page
from wtb_ray.batch.spec import parse_spec

router = APIRouter(prefix="/v1/batches", tags=["batches"])
BatchStatus = Literal["pending", "running", "completed", "cancelled"]


def links(request: Request, batch_id: str) -> dict[str, str]:
    base = str(request.base_url).rstrip("/")
    return {"self": f"{base}/v1/batches/{batch_id}",
            "results": f"{base}/v1/batches/{batch_id}/results",
            "events": f"{base}/v1/events?batch_id={batch_id}",
            "cancel": f"{base}/v1/batches/{batch_id}/cancel"}


@router.post("", status_code=202, responses={202: {"links": {
    "status": {"operationId": "status_v1_batches__batch_id__get",
               "parameters": {"batch_id": "$response.body#/id"}},
    "results": {"operationId": "results_v1_batches__batch_id__results_get",
                "parameters": {"batch_id": "$response.body#/id"}},
    "cancel": {"operationId": "cancel_v1_batches__batch_id__cancel_post",
               "parameters": {"batch_id": "$response.body#/id"}},
    "delete": {"operationId": "delete_v1_batches__batch_id__delete",
               "parameters": {"batch_id": "$response.body#/id"}}}}})
def submit(ctx: Ctx, body: BatchIn, request: Request) -> dict[str, Any]:
    """Check and persist the batch with every cell, then hand it to the orchestrator; this
    answers before any cell runs."""
    if len(body.cases) > ctx.settings.api_max_cases:
        raise BadField("cases", f"at most {ctx.settings.api_max_cases} cases per batch")
    check_matrix(ctx.workflow(body.workflow), body.variants, body.combinations)
    spec = parse_spec({**body.model_dump(exclude_none=True),
                       "workflow": ctx.ref(body.workflow)})
    cells = len(spec.choices()) * len(spec.cases) * spec.repeats
    if cells > ctx.settings.api_max_cells:
        raise BadField("repeats" if spec.repeats > 1 else "cases",
                       f"{cells} executions (combinations x cases x repeats) is more than "
                       f"the {ctx.settings.api_max_cells} one request may create")
    batch = ctx.batches.submit(spec)  # a new id: nothing to look up first
    ctx.schedule(batch.id)  # not awaited: the batch is already saved
    return {"id": batch.id, "status": batch.status, "total": batch.total,
            "links": links(request, batch.id)}


@router.get("")
def list_batches(ctx: Ctx, request: Request, limit: Limit = 50, offset: Offset = 0,
                 status: Annotated[BatchStatus | None, Query()] = None) -> dict[str, Any]:
    page = ctx.batches.batches.page(status=status, limit=limit, offset=offset)
    return {"batches": [b.to_dict() for b in page], "limit": limit, "offset": offset,
            "next": next_page(request.url, len(page), limit, offset)}


@router.get("/{batch_id}")
def status(ctx: Ctx, batch_id: IdPath, request: Request) -> dict[str, Any]:
    progress = ctx.batches.progress(batch_id)
    return {**progress, "links": links(request, batch_id)}


@router.get("/{batch_id}/results")
def results(ctx: Ctx, batch_id: IdPath, request: Request, limit: Limit = 100,
            offset: Offset = 0) -> dict[str, Any]:
    batch = ctx.batches.batches.get(batch_id)
    cells = ctx.batches.batches.results(batch_id, limit=limit, offset=offset)
    return {"batch": batch.to_dict(),
            "leaderboard": [r.to_dict() for r in ctx.batches.leaderboard(batch_id)],
            "cells": cells, "limit": limit, "offset": offset,
            "next": next_page(request.url, len(cells), limit, offset)}


@router.post("/{batch_id}/cancel", status_code=202)
def cancel(ctx: Ctx, batch_id: IdPath) -> dict[str, Any]:
    batch = ctx.batches.batches.request_cancel(batch_id)
    return {"batch": batch.to_dict()}


@router.delete("/{batch_id}")
def delete(ctx: Ctx, batch_id: IdPath) -> dict[str, Any]:
    """Delete a finished batch whole, as `wtb batch delete` does: its cells with their
    histories, its results and events. 409 until it has finished (cancel it first), while a
    cell of it runs, or while a fork of a cell exists (naming the forks). Their stored data
    goes at the next `wtb gc`, unless other executions share it."""
    cells, left = ctx.batches.delete(batch_id)
    return {"deleted": batch_id, "executions": len(cells), "workspace_not_removed": left}
