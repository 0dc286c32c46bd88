"""Finding checkpoints by what a user says: an id of this execution, or "just before node X
last ran" on the current branch."""

from __future__ import annotations

from typing import Any, cast

from wtb_ray.domain.checkpoint import Checkpoint
from wtb_ray.domain.errors import InvalidInput, NotFound
from wtb_ray.domain.execution import Execution
from wtb_ray.storage.queries import State
from wtb_ray.storage.store import Store


def checkpoint_id(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"checkpoint id must be an integer, got {value!r}") from None


def own_checkpoint(store: Store, ex: Execution, ident: int | None) -> Checkpoint:
    """Checkpoint ``ident``, refused unless it belongs to ``ex``."""
    return _owned(ex, None if ident is None else store.checkpoint(checkpoint_id(ident)))


def with_state(store: Store, execution_id: str, ident: int | None
               ) -> tuple[Execution, Checkpoint, State]:
    """An execution, its checkpoint ``ident`` (its head if None) and the state there, read
    in one transaction; the checkpoint refused as by ``own_checkpoint``."""
    cid = None if ident is None else checkpoint_id(ident)
    ex, ckpt, state = store.checkpoint_with_state(execution_id, cid)
    return ex, _owned(ex, ckpt), cast(State, state)  # read when the checkpoint is ex's


def _owned(ex: Execution, ckpt: Checkpoint | None) -> Checkpoint:
    if ckpt is None:
        raise InvalidInput(f"execution {ex.id} has no checkpoint yet")
    if ckpt.execution_id != ex.id:
        raise InvalidInput(f"checkpoint {ckpt.id} belongs to execution {ckpt.execution_id}, "
                           f"not {ex.id}")
    return ckpt


def rollback_target(store: Store, ex: Execution, to: int | str,
                    nodes: list[str] | None) -> Checkpoint:
    """A checkpoint id, or a node name: the nearest point on the current branch from which
    that node ran (so resuming runs it again). ``nodes`` (if known) tells a typo apart."""
    if isinstance(to, int) or (isinstance(to, str) and to.isdigit()):
        return own_checkpoint(store, ex, int(to))
    by_id = {c.id: c for c in store.checkpoints(ex.id)}
    branch: list[Checkpoint] = []
    cursor = by_id.get(ex.head_checkpoint_id)
    while cursor is not None:
        branch.append(cursor)
        cursor = by_id.get(cursor.parent_id)
    for ckpt in branch[1:]:  # nearest ancestor from which `to` ran
        if ckpt.next_node == to:
            return ckpt
    if branch and branch[0].next_node == to:
        return branch[0]
    if nodes is not None and to not in nodes:
        raise InvalidInput(f"workflow {ex.workflow_name!r} has no node {to!r} "
                           f"(nodes: {', '.join(nodes)})")
    raise NotFound("checkpoint before node", f"{to} on the current branch of {ex.id}")
