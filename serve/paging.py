"""Query parameters of paged lists, and the link to the next page."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.datastructures import URL

Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
# A workspace may hold many thousands of paths: up to a few MB of JSON a page.
PathsLimit = Annotated[int, Query(ge=1, le=10_000)]


def next_page(url: URL, count: int, limit: int, offset: int) -> str | None:
    """The link to the page after this one (``url`` with limit and offset), or None when
    this page was not full."""
    if count < limit:
        return None
    return str(url.include_query_params(limit=limit, offset=offset + limit))
