"""Query parameters of paged lists, and the link to the next page."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]


def next_page(request: Request, count: int, limit: int, offset: int) -> str | None:
    if count < limit:
        return None
    return str(request.url.include_query_params(limit=limit, offset=offset + limit))
