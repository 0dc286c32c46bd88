"""The Execution entity: one run of a workflow, with an explicit transition table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wtb_ray.domain.errors import InvalidTransition
from wtb_ray.domain.events import Event
from wtb_ray.domain.ids import ordered_hex


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A rollback is running its compensations (or was interrupted, or one of them failed):
    # run the rollback again to finish it.
    ROLLING_BACK = "rolling_back"

    def __str__(self) -> str:
        return self.value


P, R, Z, C, F, X, RB = (Status.PENDING, Status.RUNNING, Status.PAUSED, Status.COMPLETED,
                        Status.FAILED, Status.CANCELLED, Status.ROLLING_BACK)

# action -> {from status: to status}. Anything absent is forbidden.
TRANSITIONS: dict[str, dict[Status, Status]] = {
    "start": {P: R},
    "resume": {Z: R, F: R},
    "pause": {P: Z, R: Z},
    # A run whose runner died (lease expired) is taken over by another process.
    "recover": {R: R},
    "complete": {R: C},
    "fail": {R: F},
    # A batch cell that cannot run at all (its runtime_env cannot be set up) fails unstarted.
    "reject": {P: F, F: F},
    "stop": {P: X, R: X, Z: X, F: X, RB: X},
    # Rollback moves the head to an earlier checkpoint and leaves the run paused there. With
    # compensations to run it passes through ROLLING_BACK, where it stays until they all ran.
    "begin_rollback": {Z: RB, F: RB, C: RB, RB: RB},
    "rollback": {Z: Z, F: Z, C: Z, RB: Z},
}

# Requests another process can leave for the process that runs the execution.
REQUESTABLE = {"pause": {R}, "stop": {R}}

_HINTS = {
    ("resume", C): "it finished; roll it back or fork it to run again",
    ("resume", X): "it was stopped; fork it to continue from one of its checkpoints",
    ("resume", R): "it is already running",
    ("rollback", R): "pause it first",
    ("rollback", X): "it was stopped; fork one of its checkpoints instead",
    ("pause", Z): "it is already paused",
    ("resume", RB): "a rollback did not finish; run the rollback again to complete it",
    ("pause", RB): "a rollback did not finish; run the rollback again to complete it",
}

TERMINAL = frozenset({C, X})


def new_id() -> str:
    """20 hex digits: 11 of time, 9 random (36 bits); ordered so that a batch's cells sit
    together in every index keyed by execution id."""
    return ordered_hex(20)


@dataclass
class Execution:
    """One run of one workflow on one input with one variant choice."""

    workflow_name: str
    workflow_ref: str | None
    id: str = field(default_factory=new_id)
    workflow_version: str = "1"
    status: Status = Status.PENDING
    variants: dict[str, str] = field(default_factory=dict)
    break_before: list[str] = field(default_factory=list)
    break_after: list[str] = field(default_factory=list)
    head_checkpoint_id: int | None = None
    step: int = 0
    control: str | None = None
    error: dict[str, Any] | None = None
    parent_execution_id: str | None = None
    forked_from_checkpoint_id: int | None = None
    batch_id: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    attempts: int = 0
    version: int = 0
    labels: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    workspace: dict[str, Any] | None = None  # {"path": str, "ignore": [patterns]} if tracked

    def event(self, kind: str, node: str | None = None, checkpoint_id: int | None = None,
              **data: Any) -> Event:
        """An event about this execution (tagged with its batch, if any)."""
        return Event(kind, self.id, node, checkpoint_id, data, batch_id=self.batch_id)

    def can(self, action: str) -> bool:
        return self.status in TRANSITIONS[action]

    def apply(self, action: str) -> Status:
        """Move to the status ``action`` leads to, or raise InvalidTransition."""
        allowed = TRANSITIONS[action]
        if self.status not in allowed:
            raise InvalidTransition(self.id, self.status.value, action,
                                    _HINTS.get((action, self.status), ""))
        self.status = allowed[self.status]
        self.updated_at = time.time()
        return self.status

    def check(self, action: str) -> None:
        """Raise InvalidTransition if ``action`` is forbidden now, without changing anything."""
        if not self.can(action):
            raise InvalidTransition(self.id, self.status.value, action,
                                    _HINTS.get((action, self.status), ""))

    def check_request(self, action: str) -> None:
        if self.status not in REQUESTABLE[action]:
            raise InvalidTransition(self.id, self.status.value, action,
                                    _HINTS.get((action, self.status), ""))

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow_name,
            "workflow_ref": self.workflow_ref,
            "workflow_version": self.workflow_version,
            "status": self.status.value,
            "variants": dict(self.variants),
            "break_before": list(self.break_before),
            "break_after": list(self.break_after),
            "head_checkpoint_id": self.head_checkpoint_id,
            "step": self.step,
            "control": self.control,
            "error": self.error,
            "parent_execution_id": self.parent_execution_id,
            "forked_from_checkpoint_id": self.forked_from_checkpoint_id,
            "batch_id": self.batch_id,
            "attempts": self.attempts,
            "labels": dict(self.labels),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "workspace": dict(self.workspace) if self.workspace else None,
        }
