"""Claiming an execution to run it here (start, resume or recover after its runner died),
and letting the claim go when its files cannot be restored."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from wtb_ray.domain.errors import InvalidTransition, NotFound, WorkspaceError
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.domain.graph import Workflow
from wtb_ray.engine import edits, workspaces
from wtb_ray.engine.lease import lease_is_dead
from wtb_ray.engine.runner import RELEASE, Cursor, Run
from wtb_ray.engine.state import TrackedState, as_state
from wtb_ray.storage.queries import Head
from wtb_ray.storage.rows import dumps
from wtb_ray.storage.store import Change, Committed

if TYPE_CHECKING:
    from wtb_ray.engine.bench import Bench, WorkflowLike

log = logging.getLogger(__name__)


def resume(bench: Bench, execution_id: str, *, patch: Mapping[str, Any] | None,
           variants: Mapping[str, str] | None, workflow: WorkflowLike | None,
           workspace_edits: str | None) -> Execution:
    """See Bench.resume."""
    ex = bench.store.execution(execution_id)
    if ex.status is Status.RUNNING and lease_is_dead(ex) and not bench.keeper.holds(ex.id):
        action = "recover"
    else:
        if ex.status is Status.RUNNING:
            raise InvalidTransition(ex.id, ex.status.value, "resume",
                                    f"it is running in {ex.lease_owner}")
        ex.check("resume")
        action = "resume"
    wf = bench.workflow_for(ex, workflow)
    data: dict[str, Any] = {"previous_owner": ex.lease_owner} if action == "recover" else {}
    if variants:
        ex.variants = {**ex.variants, **wf.check_choice(dict(variants))}
        for node, name in variants.items():
            if name == "default":
                ex.variants.pop(node, None)
        data["variants"] = dict(variants)
    patch = as_state(patch, "--patch") if patch is not None else None
    if patch:
        data["patched_keys"] = sorted(patch)
    kept, said = edits.settle(bench, ex, "resume", workspace_edits)  # after the input checks
    data.update(said)
    kind = "execution.recovered" if action == "recover" else "execution.resumed"
    return claim_and_drive(bench, ex, action, wf, events=[ex.event(kind, **data)], patch=patch,
                           kept_tree=kept.tree if kept else None)


def claim_and_drive(bench: Bench, ex: Execution, action: str, workflow: WorkflowLike | None,
                    events: list[Event], patch: Mapping[str, Any] | None = None,
                    kept_tree: str | None = None) -> Execution:
    wf = bench.workflow_for(ex, workflow)
    change, to_run = claim_change(bench, ex, action, wf, events, patch, kept_tree=kept_tree)
    committed = bench.store.commit(change)
    try:
        run = to_run(committed)
    except WorkspaceError as exc:
        unclaim(bench, ex, exc)
        raise
    return bench.runner.drive(ex, wf, run.state, run.cursor, resumed=run.skip_break,
                              workspace=run.workspace)


def claim_change(bench: Bench, ex: Execution, action: str, wf: Workflow, events: list[Event],
                 patch: Mapping[str, Any] | None = None, deadline: float | None = None,
                 loaded: Head | None = None, kept_tree: str | None = None
                 ) -> tuple[Change, Callable[[Committed], Run]]:
    """See Bench.claim_change."""
    if loaded is None:
        _, head, state = bench.store.checkpoint_with_state(ex.id, ex.head_checkpoint_id)
        if head is None or state is None:  # no head: nothing to resume from
            raise NotFound("checkpoint", f"head of {ex.id}")
        loaded = head, state
    head, (values, manifest, since_full) = loaded
    state = TrackedState(values, manifest, since_full)
    write = None
    if patch or kept_tree:  # a patch of state, of files (hand edits kept), or of both
        write = state.checkpoint(patch, node="patch", parent_id=head.id, step=ex.step,
                                 kind="patch", next_node=head.next_node)
        write.workspace_tree = kept_tree or head.workspace_tree
    ws = workspaces.open_for(bench.store, bench.settings, ex)
    ex.apply(action)
    bench.take_lease(ex)
    change = Change(ex.id, events, {
        "status": ex.status.value, "variants": dumps(ex.variants), "error": None,
        "control": None, "lease_owner": ex.lease_owner,
        "lease_expires_at": ex.lease_expires_at, "attempts": ex.attempts + 1,
    }, fence_version=ex.version, checkpoint=write)

    def to_run(committed: Committed) -> Run:
        ex.version, ex.error, ex.control = committed.version, None, None
        ex.attempts += 1
        if write is not None:
            ex.head_checkpoint_id = committed.checkpoint_id
        bench.bus.publish(committed.events)
        if ws is not None:
            # A run continues from its head's files, whatever a crashed or failed node
            # left; only now that the lease is ours may they be touched.
            ws.restore(head.workspace_tree if write is None else write.workspace_tree,
                       watch=True)
        return Run(ex, wf, state, Cursor(ex.head_checkpoint_id, head.next_node),
                   skip_break=action != "start", deadline=deadline, workspace=ws)

    return change, to_run


def unclaim(bench: Bench, ex: Execution, exc: WorkspaceError) -> None:
    """A claimed run whose files could not be restored never ran a node: leave it paused
    at its head, its lease released and the reason in its history, to be resumed once the
    cause is fixed. If even that cannot be committed, its lease expires."""
    ex.apply("pause")
    try:
        committed = bench.store.commit(Change(ex.id, [ex.event(
            "execution.paused", None, ex.head_checkpoint_id,
            reason=f"its workspace could not be restored: {exc}")],
            {"status": ex.status.value, **RELEASE}, fence_owner=bench.owner,
            fence_version=ex.version))
    except Exception:
        log.exception("could not pause %s after its workspace failed to restore", ex.id)
        return
    ex.version, ex.lease_owner, ex.lease_expires_at = committed.version, None, None
    bench.bus.publish(committed.events)
