"""/v1/diff: which state keys and workspace files differ between two checkpoints (of one
execution, or of a fork and its origin), or between a checkpoint and its workspace directory
as it is now, as `wtb diff --json` prints it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from serve.context import BadField, Ctx
from serve.models import MAX_ROW_ID
from wtb_ray.domain.errors import InvalidInput

router = APIRouter(prefix="/v1/diff", tags=["executions"])

CheckpointId = Annotated[int, Query(ge=1, le=MAX_ROW_ID)]


@router.get("")
def diff(ctx: Ctx, a: CheckpointId, b: CheckpointId | None = None) -> dict[str, Any]:
    """Checkpoint ``a`` against ``b``: state keys added, removed and changed (with a unified
    diff for text), and files added, removed and changed (with a unified diff for text files
    up to 256 KiB, while 8 MiB of them have been read; the rest are marked
    ``diff_left_out`` and counted in ``text_diffs_left_out``). Without ``b``: the files of
    ``a`` against its execution's workspace directory as it is now, on the server's machine
    (``b`` and ``state`` null), as `wtb diff A --json` gives them."""
    if b is not None:
        return ctx.bench.diff(a, b)
    try:
        return ctx.bench.diff_workspace(a)
    except InvalidInput as exc:  # no directory to compare with: say what else to give
        raise BadField("b", f"{exc}; give b, a checkpoint to compare with") from None
