"""What one transaction writes about one execution (a Change), and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution


@dataclass
class CheckpointWrite:
    parent_id: int | None
    step: int
    kind: str
    node: str | None
    next_node: str | None
    is_full: bool
    manifest: str  # JSON: key -> blob hash (a delta unless is_full)
    # (hash, codec, size, payload) of values not stored before
    blobs: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    workspace_tree: str | None = None  # its blobs are uploaded before the commit


@dataclass
class Change:
    """Everything one transaction writes about one execution."""

    execution_id: str
    events: list[Event]
    values: dict[str, Any] = field(default_factory=dict)  # execution columns to set
    fence_version: int | None = None  # apply only if the row is still at this version
    fence_owner: str | None = None  # apply only if this owner holds the lease and it runs
    checkpoint: CheckpointWrite | None = None
    boundary: dict[str, Any] | None = None  # node_boundaries columns; exit checkpoint filled in
    new_execution: Execution | None = None  # insert this row first
    # undo actions registered by the node run: entry_checkpoint_id, node, step, seq, fn,
    # args (JSON), key; they take the new checkpoint's id when there is one
    compensations: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Committed:
    checkpoint_id: int | None
    version: int
    control: str | None
    events: list[Event]
