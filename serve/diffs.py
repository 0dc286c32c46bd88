"""/v1/diff: which state keys and workspace files differ between two checkpoints (of one
execution, or of a fork and its origin), as `wtb diff --json` prints it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from serve.context import Ctx
from serve.models import MAX_ROW_ID

router = APIRouter(prefix="/v1/diff", tags=["executions"])

CheckpointId = Annotated[int, Query(ge=1, le=MAX_ROW_ID)]


@router.get("")
def diff(ctx: Ctx, a: CheckpointId, b: CheckpointId) -> dict[str, Any]:
    """Checkpoint ``a`` against ``b``: state keys added, removed and changed (with a unified
    diff for text), and files added, removed and changed (with a unified diff for text files
    up to 256 KiB, while 8 MiB of them have been read; the rest are marked
    ``diff_left_out`` and counted in ``text_diffs_left_out``)."""
    return ctx.bench.diff(a, b)
