"""Checkpoints (the state after a node boundary) and node boundaries (one node run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Why a checkpoint exists: the start of a run, a node finished, the user patched the state,
# or the checkpoint opens a fork of another execution.
KINDS = ("start", "node", "patch", "fork")


@dataclass(frozen=True)
class Checkpoint:
    """State after a node boundary. ``parent_id`` links checkpoints into a tree."""

    id: int
    execution_id: str
    parent_id: int | None
    step: int
    kind: str
    node: str | None
    next_node: str | None
    created_at: float
    workspace_tree: str | None = None  # root tree of the workspace files, if tracked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NodeBoundary:
    """The record of one node run: where it started, where it ended, how it went."""

    id: int
    execution_id: str
    step: int
    node: str
    variant: str
    attempt: int
    entry_checkpoint_id: int | None
    exit_checkpoint_id: int | None
    status: str
    started_at: float
    duration_ms: float
    error: str | None
    usage: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
