"""Rollback: undo the node runs after a checkpoint (their undo actions, then the
workspace's files) and move the execution's head back to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wtb_ray.domain.checkpoint import Checkpoint
from wtb_ray.domain.errors import InvalidInput, InvalidTransition
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.engine import checkpoints, compensation, edits, workspaces
from wtb_ray.engine.lease import lease_is_dead
from wtb_ray.engine.runner import RELEASE
from wtb_ray.storage.store import Change

if TYPE_CHECKING:
    from wtb_ray.engine.bench import Bench


def rollback(bench: Bench, execution_id: str, to: int | str,
             workspace_edits: str | None = None) -> Execution:
    """See Bench.rollback."""
    ex = bench.store.execution(execution_id)
    if (ex.status is Status.ROLLING_BACK and not lease_is_dead(ex)
            and ex.lease_owner != bench.owner):
        raise InvalidTransition(ex.id, ex.status.value, "rollback",
                                f"a rollback is running in {ex.lease_owner}")
    ex.check("rollback")
    target = _target(bench, ex, to)
    _, said = edits.settle(bench, ex, "rollback", workspace_edits)  # before any undo runs
    todo = compensation.plan(bench.store, ex, target)
    with bench.keeper.hold([ex.id]):
        if todo or ex.status is Status.ROLLING_BACK:
            compensation.undo(bench.store, bench.bus, ex, target, todo, bench.owner,
                              bench.lease_seconds)
        ws = workspaces.open_for(bench.store, bench.settings, ex)
        if ws is not None:
            # Unfinished until the head moves: files at the target under the old head are
            # no hand edits, and running the rollback again completes it without asking.
            ws.restore(target.workspace_tree, then_commit=True)
    from_id = ex.head_checkpoint_id
    ex.apply("rollback")
    committed = bench.store.commit(Change(ex.id, [ex.event(
        "execution.rolled_back", target.next_node, target.id, from_checkpoint_id=from_id,
        to_checkpoint_id=target.id, **said)],
        {"status": ex.status.value, "head_checkpoint_id": target.id, "step": target.step,
         "error": None, **RELEASE}, fence_version=ex.version))
    ex.head_checkpoint_id, ex.step, ex.error = target.id, target.step, None
    ex.version = committed.version
    if ws is not None:
        ws.restore_done()
    bench.bus.publish(committed.events)
    return ex


def _target(bench: Bench, ex: Execution, to: int | str) -> Checkpoint:
    try:
        nodes = list(bench.workflow_for(ex).nodes)
    except InvalidInput:  # not importable here: we cannot tell a typo from a real node
        nodes = None
    return checkpoints.rollback_target(bench.store, ex, to, nodes)
