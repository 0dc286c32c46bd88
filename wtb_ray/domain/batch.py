"""A batch: a matrix of variant combinations x cases x repeats, each cell one execution."""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

from wtb_ray.domain.events import Event

PENDING, RUNNING, COMPLETED, CANCELLED = "pending", "running", "completed", "cancelled"
FINISHED = frozenset({COMPLETED, CANCELLED})


def new_batch_id() -> str:
    return "b" + uuid.uuid4().hex[:15]


@dataclass
class Batch:
    name: str
    workflow_ref: str
    spec: dict[str, Any]
    total: int
    id: str = field(default_factory=new_batch_id)
    status: str = PENDING
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.cancelled

    def event(self, kind: str, **data: Any) -> Event:
        return Event(kind, "", None, None, data, batch_id=self.id)

    def to_dict(self, *, with_spec: bool = False) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the spec (every case) only to drop it.
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        if with_spec:
            data["spec"] = copy.deepcopy(self.spec)
        data["running_or_pending"] = self.total - self.done
        return data
