"""What a failed node run records: the error (with its traceback, unless WTB raised it), the
node.failed and execution.failed events, and a failed node boundary if the node ran."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from wtb_ray.domain.errors import NodeFailed, WTBError
from wtb_ray.domain.events import Event

if TYPE_CHECKING:
    from wtb_ray.engine.runner import Run


def record(run: Run, node: str, variant: str | None, started: float, duration_ms: float,
           exc: BaseException, attempts: int = 1, retries: list[Event] | None = None
           ) -> tuple[dict[str, Any], list[Event], dict[str, Any] | None]:
    """(error, events, boundary): ``variant`` None means the node never ran (no boundary);
    ``retries`` are the node.retrying events of its earlier attempts."""
    ex, cursor = run.ex, run.cursor
    if isinstance(exc, NodeFailed):
        error: dict[str, Any] = {"node": node, "type": exc.error_type,
                                 "message": exc.error_message, "attempts": exc.attempts}
        cause = exc.__cause__ or exc
    else:
        error = {"node": node, "type": type(exc).__name__, "message": str(exc),
                 "attempts": attempts}
        cause = exc
    if not isinstance(cause, WTBError):
        error["traceback"] = "".join(traceback.format_exception(cause))[-4000:]
    events = [*(retries or []),
              ex.event("node.failed", node, cursor.checkpoint_id,
                       **{k: v for k, v in error.items() if k != "node"}),
              ex.event("execution.failed", node, cursor.checkpoint_id,
                       error=f"{error['type']}: {error['message']}")]
    boundary = None
    if variant is not None:
        boundary = {"step": ex.step + 1, "node": node, "variant": variant,
                    "attempt": error["attempts"], "entry_checkpoint_id": cursor.checkpoint_id,
                    "status": "failed", "started_at": started, "duration_ms": duration_ms,
                    "error": f"{error['type']}: {error['message']}", "usage": None}
    return error, events, boundary
