"""The test bench: run, pause, resume, stop, roll back and fork executions.

Every operation validates its input before writing anything, then makes one fenced commit, so
any process sharing the database can control an execution another process started.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wtb_ray.config import Settings
from wtb_ray.domain.checkpoint import Checkpoint, NodeBoundary
from wtb_ray.domain.errors import (
    ConcurrencyConflict,
    HasForks,
    InvalidInput,
    InvalidTransition,
)
from wtb_ray.domain.events import Event, EventBus
from wtb_ray.domain.execution import REQUESTABLE, Execution
from wtb_ray.domain.graph import Workflow
from wtb_ray.engine import checkpoints, claims, creation, diff, edits, forking, rollback, workspaces
from wtb_ray.engine.calls import NodeCaller
from wtb_ray.engine.lease import LeaseKeeper, is_held, new_owner
from wtb_ray.engine.loader import load_workflow
from wtb_ray.engine.runner import RELEASE, Cursor, Run, Runner
from wtb_ray.storage import compensation_sql, gc
from wtb_ray.storage.queries import Head
from wtb_ray.storage.store import Change, Committed, Store

log = logging.getLogger(__name__)

WorkflowLike = Workflow | str


class Bench:
    """Entry point of the core library. ``Bench.open()`` uses Settings (``WTB_*``)."""

    def __init__(self, store: Store, *, lease_seconds: float = 30.0,
                 bus: EventBus | None = None, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.bus = bus or EventBus()
        self.lease_seconds = lease_seconds
        self.owner = new_owner()
        self._caller = NodeCaller()
        self.keeper = LeaseKeeper(store, self.owner, lease_seconds)
        self._runner = Runner(store, self.bus, self._caller, self.keeper, lease_seconds)
        self._seen: dict[tuple[str, str], Workflow] = {}

    @classmethod
    def open(cls, settings: Settings | None = None, *, database_url: str | None = None) -> Bench:
        settings = (settings or Settings()).with_database(database_url)
        store = Store.open(settings.url, auto_migrate=settings.auto_migrate,
                           busy_timeout_ms=settings.sqlite_busy_timeout_ms,
                           pool_size=settings.db_pool_size)
        store.reconnect_seconds = settings.reconnect_seconds
        return cls(store, lease_seconds=settings.lease_seconds, settings=settings)

    def close(self) -> None:
        self.keeper.close()
        self._caller.close()
        self.store.close()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- starting -----------------------------------------------------------------------

    def create(self, workflow: WorkflowLike, input: Mapping[str, Any] | None = None, *,
               variants: Mapping[str, str] | None = None, break_before: Iterable[str] = (),
               break_after: Iterable[str] = (), labels: Mapping[str, Any] | None = None,
               batch_id: str | None = None, execution_id: str | None = None,
               workspace: workspaces.WorkspaceSpec = None, workspace_ignore: Iterable[str] = (),
               _running: bool = False) -> Execution:
        """Persist a new execution (pending) with its start checkpoint; runs nothing.

        ``workspace`` (True, or a directory path) tracks a directory of files with the
        execution: what it holds now is recorded with the start checkpoint.
        """
        wf = self._workflow(workflow)
        ex, change, state, ws = creation.prepare(
            self, wf, input, variants=variants, break_before=break_before, break_after=break_after,
            labels=labels, batch_id=batch_id, execution_id=execution_id, running=_running,
            workspace=workspace, workspace_ignore=workspace_ignore)
        committed = self.store.commit(change)
        self.created(ex, committed)
        if _running:
            return self._runner.drive(ex, wf, state, Cursor(committed.checkpoint_id, wf.entry),
                                      workspace=ws)
        return ex

    def created(self, ex: Execution, committed: Committed) -> None:
        ex.head_checkpoint_id, ex.version = committed.checkpoint_id, committed.version
        self.bus.publish(committed.events)

    def run(self, workflow: WorkflowLike, input: Mapping[str, Any] | None = None,
            **options: Any) -> Execution:
        """Create an execution and run it here until it completes, pauses or fails."""
        return self.create(workflow, input, _running=True, **options)

    def start(self, execution_id: str, *, workflow: WorkflowLike | None = None,
              workspace_edits: str | None = None) -> Execution:
        """Run a pending execution here (a batch creates them first, runs them later).

        Its workspace changed by hand since it was created is refused (WorkspaceEdited)
        unless ``workspace_edits`` says "keep" or "discard", as for ``resume``."""
        ex = self.store.execution(execution_id)
        ex.check("start")
        kept, said = edits.settle(self, ex, "start", workspace_edits)
        return claims.claim_and_drive(self, ex, "start", workflow,
                                      events=[ex.event("execution.started", **said)],
                                      kept_tree=kept.tree if kept else None)

    # -- control ------------------------------------------------------------------------

    def resume(self, execution_id: str, *, patch: Mapping[str, Any] | None = None,
               variants: Mapping[str, str] | None = None,
               workflow: WorkflowLike | None = None,
               workspace_edits: str | None = None) -> Execution:
        """Continue a paused or failed run (or one whose runner died) from its head,
        optionally patching state (a checkpoint of its own) and switching variants.

        A paused run whose workspace was changed by hand is not resumed (WorkspaceEdited)
        unless ``workspace_edits`` says "keep" (go on from those files, recorded in a patch
        checkpoint) or "discard" (put back the head's files); see engine/edits.py."""
        return claims.resume(self, execution_id, patch=patch, variants=variants,
                             workflow=workflow, workspace_edits=workspace_edits)

    def pause(self, execution_id: str) -> Execution:
        """Pause now if nothing runs it; otherwise ask its runner to pause at the next boundary."""
        return self._control(execution_id, "pause", "execution.paused")

    def stop(self, execution_id: str) -> Execution:
        """Cancel for good (fork it to continue); a running one stops at the next boundary."""
        return self._control(execution_id, "stop", "execution.cancelled")

    def rollback(self, execution_id: str, to: int | str, *,
                 workspace_edits: str | None = None) -> Execution:
        """Move the head back to a checkpoint (id, or the point before a node last ran) and
        leave the run paused there. Nothing is deleted: the abandoned branch stays listed.

        The undo actions of the node runs undone run first, newest first, exactly once each
        (see engine.compensation); the workspace is then restored to the target's files.
        One that raises stops the rollback (CompensationFailed); run it again to finish.
        A paused or completed run whose workspace was changed by hand is not rolled back
        (WorkspaceEdited) unless ``workspace_edits`` is "discard".
        """
        return rollback.rollback(self, execution_id, to, workspace_edits)

    def fork(self, execution_id: str, at: int | None = None, *,
             patch: Mapping[str, Any] | None = None, variants: Mapping[str, str] | None = None,
             run: bool = True, workflow: WorkflowLike | None = None,
             labels: Mapping[str, Any] | None = None,
             workspace: workspaces.WorkspaceSpec = None) -> Execution:
        """Start a new execution from any checkpoint of this one (default: its head).

        The fork shares stored values with its origin but nothing else: neither can change the
        other. With ``run=False`` it is left paused at its first checkpoint.
        """
        return forking.fork(self, execution_id, at, patch=patch, variants=variants, run=run,
                            workflow=workflow, labels=labels, workspace=workspace)

    def delete(self, execution_id: str) -> str | None:
        """Delete an execution and its history (not while it runs, nor while a fork of it
        exists, nor a batch's cell); its blobs go at the next ``wtb gc``, its WTB-made
        workspace directory now. Returns None, or what of that directory could not be removed
        and why (``wtb gc`` removes it later)."""
        for _ in range(3):  # checked again as it is deleted: if it changed, say how
            ex = self.store.execution(execution_id)
            if ex.batch_id is not None:
                raise InvalidTransition(ex.id, ex.status.value, "delete",
                                        f"it is a cell of batch {ex.batch_id}, whose results "
                                        "count it: batches are kept whole")
            if is_held(ex):
                raise InvalidTransition(ex.id, ex.status.value, "delete",
                                        f"it is held by {ex.lease_owner}; stop it first")
            forks = gc.forks_of(self.store, ex.id)
            if forks:
                raise HasForks(ex.id, forks)
            if gc.delete_executions(self.store, [ex.id], may_go=lambda e: not is_held(e)):
                break
        else:
            raise ConcurrencyConflict(f"execution {execution_id} kept changing while it was "
                                      "being deleted; try again")
        left = workspaces.remove_managed(self.settings, ex.id)
        if left is not None:
            log.warning("execution %s deleted; its workspace directory is not all gone (%s): "
                        "`wtb gc` removes the rest", ex.id, left)
        return left

    # -- queries ------------------------------------------------------------------------

    def get(self, execution_id: str) -> Execution:
        return self.store.execution(execution_id)

    def state(self, execution_id: str, checkpoint_id: int | None = None) -> dict[str, Any]:
        """The state at a checkpoint of the execution (default: its head)."""
        ex = self.store.execution(execution_id)
        target = ex.head_checkpoint_id if checkpoint_id is None else checkpoint_id
        self._own_checkpoint(ex, target)
        return self.store.state_at(target)[0]

    def checkpoints(self, execution_id: str) -> list[Checkpoint]:
        self.store.execution(execution_id)
        return self.store.checkpoints(execution_id)

    def files(self, execution_id: str, checkpoint_id: int | None = None, *, offset: int = 0,
              limit: int | None = None) -> list[dict[str, Any]]:
        """The workspace files at a checkpoint of the execution (default: its head); a page
        of them with ``offset`` / ``limit``."""
        ex = self.store.execution(execution_id)
        if not ex.workspace:
            raise InvalidInput(f"execution {ex.id} has no workspace")
        target = ex.head_checkpoint_id if checkpoint_id is None else checkpoint_id
        return diff.files(self.store, self._own_checkpoint(ex, target), offset, limit)

    def diff(self, checkpoint_a: int, checkpoint_b: int) -> dict[str, Any]:
        """State keys and workspace files that differ between two checkpoints (of any
        executions: a fork and its origin compare too)."""
        a, b = (self.store.checkpoint(checkpoints.checkpoint_id(c))
                for c in (checkpoint_a, checkpoint_b))
        return diff.diff(self.store, a, b)

    def diff_workspace(self, checkpoint: int | str) -> dict[str, Any]:
        """Workspace files that differ between a checkpoint and its execution's directory as
        it is now (against the head: the hand edits a resume would ask about), as ``diff``
        gives them. Nothing is written to the store."""
        a = self.store.checkpoint(checkpoints.checkpoint_id(checkpoint))
        ws = workspaces.open_here(self.store, self.settings, self.store.execution(a.execution_id))
        return diff.diff_directory(self.store, a, str(ws.path), ws.compare(a.workspace_tree)[1])

    def compensations(self, execution_id: str) -> list[dict[str, Any]]:
        """The undo actions the execution's nodes registered, oldest first, with status."""
        self.store.execution(execution_id)
        return self.store.run(compensation_sql.of_execution, execution_id)

    def boundaries(self, execution_id: str) -> list[NodeBoundary]:
        self.store.execution(execution_id)
        return self.store.boundaries(execution_id)

    def history(self, execution_id: str) -> list[Event]:
        self.store.execution(execution_id)
        return self.store.history(execution_id)

    # -- internals ----------------------------------------------------------------------

    def workflow_for(self, ex: Execution, workflow: WorkflowLike | None = None) -> Workflow:
        return self._workflow(workflow, ex)

    @property
    def runner(self) -> Runner:
        return self._runner

    def _workflow(self, workflow: WorkflowLike | None, ex: Execution | None = None) -> Workflow:
        """The workflow object: given, seen earlier by this bench, or imported by reference."""
        if isinstance(workflow, Workflow):
            self._seen[(workflow.name, workflow.version)] = workflow
            return workflow
        if workflow is None and ex is not None:
            seen = self._seen.get((ex.workflow_name, ex.workflow_version))
            if seen is not None:
                return seen
        ref = workflow or (ex.workflow_ref if ex else None)
        if not ref:
            raise InvalidInput(f"execution {ex.id if ex else '?'} was started from a workflow "
                               "object with no import reference; pass workflow= explicitly")
        return self._workflow(load_workflow(ref))

    def take_lease(self, ex: Execution) -> None:
        ex.lease_owner = self.owner
        ex.lease_expires_at = time.time() + self.lease_seconds

    def claim_change(self, ex: Execution, action: str, wf: Workflow, events: list[Event],
                     patch: Mapping[str, Any] | None = None, deadline: float | None = None,
                     loaded: Head | None = None, kept_tree: str | None = None
                     ) -> tuple[Change, Callable[[Committed], Run]]:
        """The change that makes this process the runner of ``ex`` (start, resume or
        recover), and what turns the committed change into a Run ready to drive.
        ``loaded``: its head checkpoint and state, if the caller read them already;
        ``kept_tree``: hand edits to go on from (engine/edits.py)."""
        return claims.claim_change(self, ex, action, wf, events, patch, deadline, loaded,
                                   kept_tree)

    def _control(self, execution_id: str, action: str, kind: str) -> Execution:
        ex = self.store.execution(execution_id)
        if is_held(ex) or self.keeper.holds(ex.id):
            ex.check_request(action)
            event = ex.event("control.requested", action=action)
            if not self.store.request_control(ex.id, action, REQUESTABLE[action], event):
                return self._control(execution_id, action, kind)  # it moved on; decide again
            ex.control = action
            return ex
        ex.apply(action)
        committed = self.store.commit(Change(ex.id, [ex.event(
            kind, None, ex.head_checkpoint_id, reason=f"{action} requested")],
            {"status": ex.status.value, **RELEASE}, fence_version=ex.version))
        ex.version, ex.lease_owner, ex.control = committed.version, None, None
        self.bus.publish(committed.events)
        return ex

    def _own_checkpoint(self, ex: Execution, checkpoint_id: int | None) -> Checkpoint:
        return checkpoints.own_checkpoint(self.store, ex, checkpoint_id)
