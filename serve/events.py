"""/v1/events: Server-Sent Events of batch and execution events, read from the outbox.

The outbox is the durable, ordered event log: a stream starts after the client's
Last-Event-ID (header, or ``last_event_id``), so a reconnecting client misses nothing. A
stream filtered on a batch ends with the batch's final event (reconnecting after it gets
204: nothing more will come); any stream ends after Settings.api_event_stream_s (below
Serve's request timeout) and the client reconnects.

On PostgreSQL an id is drawn before its transaction commits, so a lower id can appear after
a higher one has been streamed; the stream therefore only sends events older than
Settings.api_event_settle_s, by which time their transactions (a few milliseconds) are
long committed. SQLite has one writer at a time: ids become visible in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from serve.context import BadField, Ctx
from serve.models import MAX_ROW_ID, IdQuery

router = APIRouter(tags=["events"])
FINAL = {"batch.completed", "batch.cancelled"}
POLL_S = 0.25


def sse(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"


EventId = Annotated[int | None, Query(ge=0, le=MAX_ROW_ID)]


@router.get("/v1/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}},
                       204: {"description": "a finished batch with no event after the cursor"},
                       404: {"description": "no such batch or execution"}})
async def events(ctx: Ctx, request: Request, batch_id: IdQuery = None,
                 execution_id: IdQuery = None, last_event_id: EventId = None) -> StreamingResponse:
    header = request.headers.get("last-event-id")
    if header is not None and not (header.isdigit() and int(header) <= MAX_ROW_ID):
        raise BadField("Last-Event-ID", f"must be an event id (an integer from 0 to {MAX_ROW_ID})")
    cursor = int(header) if header is not None else (last_event_id or 0)
    # 404 for an id that names nothing (mistyped, or deleted since): an empty stream would
    # look like a run with nothing to say, and its client would reconnect for ever.
    if batch_id is not None:
        batch = await asyncio.to_thread(ctx.batches.batches.get, batch_id)
        # A finished batch whose events the client has all had (it reconnects after the final
        # one): 204 is what tells an EventSource to stop reconnecting.
        if batch.finished and not await asyncio.to_thread(
                ctx.bench.store.outbox_after, cursor, batch_id=batch_id, limit=1):
            return Response(status_code=204)
    if execution_id is not None:
        await asyncio.to_thread(ctx.bench.get, execution_id)
    deadline = time.monotonic() + ctx.settings.api_event_stream_s
    settle = ctx.settings.api_event_settle_s if ctx.settings.url.startswith("postgres") else 0.0

    async def stream() -> AsyncIterator[str]:
        nonlocal cursor
        yield "retry: 1000\n\n"
        while time.monotonic() < deadline:
            written_before = time.time() - settle if settle else None
            found = await asyncio.to_thread(ctx.bench.store.outbox_after, cursor,
                                            batch_id=batch_id, execution_id=execution_id,
                                            written_before=written_before)
            for event in found:
                cursor = event["id"]
                yield sse(event)
                if batch_id and event["kind"] in FINAL and event["batch_id"] == batch_id:
                    return
            if not found:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
