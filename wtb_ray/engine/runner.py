"""Drives executions node by node, committing a checkpoint at every boundary.

The runner holds each execution's lease. Each boundary is one change (checkpoint, node
boundary, audit, outbox, execution row) fenced by that lease and by the version the runner
last wrote (so a database that lost recent commits in a crash stops the runner instead of
letting it build on checkpoints that are gone); the commit returns any pause/stop request
another process left, which is honoured right there.

``drive`` runs one execution. ``drive_group`` runs many in lockstep and commits the next
boundary of all of them in one transaction (group commit): every boundary is still durable
before its execution's next node starts, at a fraction of the transactions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from wtb_ray.domain.errors import ConcurrencyConflict, NodeFailed
from wtb_ray.domain.events import Event, EventBus
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.domain.graph import END, Workflow
from wtb_ray.domain.nodes import ResolvedNode
from wtb_ray.engine import failures
from wtb_ray.engine.calls import NodeCaller
from wtb_ray.engine.context import NodeContext
from wtb_ray.engine.lease import LeaseKeeper
from wtb_ray.engine.state import TrackedState, parse_update
from wtb_ray.latency import Latency
from wtb_ray.storage.rows import dumps
from wtb_ray.storage.store import Change, Committed, Store
from wtb_ray.workspace import Workspace

log = logging.getLogger(__name__)

RELEASE = {"lease_owner": None, "lease_expires_at": None, "control": None}
_FINAL = {"pause": Status.PAUSED, "complete": Status.COMPLETED, "stop": Status.CANCELLED,
          "fail": Status.FAILED}


@dataclass
class Cursor:
    """Where a run stands: the head checkpoint and the node that runs next (None at END)."""

    checkpoint_id: int
    next_node: str | None


@dataclass
class Run:
    """One execution being driven: everything the next step needs."""

    ex: Execution
    wf: Workflow
    state: TrackedState
    cursor: Cursor
    skip_break: bool = False  # a resumed run does not stop at the breakpoint it paused at
    deadline: float | None = None  # wall clock; past it the run fails (ExecutionTimeout)
    workspace: Workspace | None = None  # files recorded at every checkpoint, if any
    resolved: dict[str, ResolvedNode] = field(default_factory=dict)
    ending: tuple[str, Event] | None = None  # a pause/stop decided at the last boundary
    lost: ConcurrencyConflict | None = None


After = Callable[[Committed], bool]  # applies a committed change; True when the run is over


class Runner:
    def __init__(self, store: Store, bus: EventBus, caller: NodeCaller, keeper: LeaseKeeper,
                 lease_seconds: float) -> None:
        self.store = store
        self.bus = bus
        self.caller = caller
        self.keeper = keeper
        self.owner = keeper.owner
        self.lease_seconds = lease_seconds
        self.node_latency = Latency()  # of node runs, for the metrics endpoint

    # -- driving ---------------------------------------------------------------------

    def drive(self, ex: Execution, workflow: Workflow, state: TrackedState, cursor: Cursor,
              *, resumed: bool = False, deadline: float | None = None,
              workspace: Workspace | None = None) -> Execution:
        """Run ``ex`` (RUNNING, leased to us) until it completes, pauses, stops or fails.
        With a ``workspace``, its files are recorded at every checkpoint."""
        run = Run(ex, workflow, state, cursor, skip_break=resumed, deadline=deadline,
                  workspace=workspace)
        with self.keeper.hold([ex.id]):
            try:
                while True:
                    change, after = self.next_change(run)
                    if after(self.store.commit(change)):
                        return ex
            except KeyboardInterrupt:
                # Ctrl-C mid-node: the last checkpoint stands; leave the run paused there.
                change, after = self._finish(run, "pause", ex.event(
                    "execution.paused", None, run.cursor.checkpoint_id, reason="interrupted"))
                after(self.store.commit(change))
                raise
            finally:
                _leave_workspace(run)

    def drive_group(self, runs: list[Run]) -> list[Run]:
        """Run many executions in lockstep, one transaction per round of boundaries.

        A run whose fence fails (another process took it over) is dropped with ``lost`` set;
        the others go on.
        """
        active = list(runs)
        with self.keeper.hold([r.ex.id for r in runs]):
            while active:
                planned = [(run, *self.next_change(run)) for run in active]
                outcomes = self.store.commit_many([change for _, change, _ in planned])
                still = []
                for (run, _, after), outcome in zip(planned, outcomes, strict=True):
                    if isinstance(outcome, ConcurrencyConflict):
                        run.lost = outcome
                    elif not after(outcome):
                        still.append(run)
                active = still
        for run in runs:
            _leave_workspace(run)
        return runs

    # -- one step: the change to commit, and what to do once it is committed ------------

    def next_change(self, run: Run) -> tuple[Change, After]:
        ex, cursor = run.ex, run.cursor
        if run.ending is not None:
            action, event = run.ending
            run.ending = None
            return self._finish(run, action, event)
        node = cursor.next_node
        if node is None:
            return self._finish(run, "complete", ex.event(
                "execution.completed", None, cursor.checkpoint_id, step=ex.step))
        if node in ex.break_before and not run.skip_break:
            return self._finish(run, "pause", ex.event(
                "execution.paused", node, cursor.checkpoint_id,
                reason=f"breakpoint before {node}"))
        run.skip_break = False
        if ex.step >= run.wf.max_steps:
            return self._failed(run, node, None, time.time(), 0.0, NodeFailed(
                node, "MaxStepsExceeded",
                f"workflow {run.wf.name!r} reached max_steps={run.wf.max_steps} before this node",
                0))
        rn = run.resolved.get(node)
        if rn is None:
            rn = run.resolved[node] = run.wf.resolve(node, ex.variants.get(node, "default"))
        if run.deadline is not None:
            remaining = run.deadline - time.time()
            if remaining <= 0:
                return self._failed(run, node, None, time.time(), 0.0, NodeFailed(
                    node, "ExecutionTimeout", "the execution ran past its timeout", 0))
            if rn.timeout is None or rn.timeout > remaining:
                rn = dataclasses.replace(rn, timeout=remaining)
        return self._node_change(run, rn)

    def _node_change(self, run: Run, rn: ResolvedNode) -> tuple[Change, After]:
        ex, cursor, node, step = run.ex, run.cursor, rn.name, run.ex.step + 1
        retries: list[Event] = []
        undo: list[dict[str, Any]] = []  # shared by the attempts: each one's effects count
        workspace = run.workspace

        def make_ctx(attempt: int) -> NodeContext:
            return NodeContext(execution_id=ex.id, node=node, variant=rn.variant, step=step,
                               attempt=attempt, params=rn.params, labels=ex.labels,
                               workspace=workspace.path if workspace else None, undo=undo)

        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            retries.append(ex.event("node.retried", node, attempt=attempt,
                                    error=f"{type(exc).__name__}: {exc}", delay_s=delay))

        started = time.time()
        t0 = time.perf_counter()
        try:
            result, ctx = self.caller.call(rn, MappingProxyType(run.state.values), make_ctx,
                                           on_retry)
            update = parse_update(node, result)
            nxt = run.wf.route(node, ChainMap(dict(update), run.state.values))
            tree, files = (workspace.snapshot_for_commit() if workspace is not None
                           else (None, None))
            write = run.state.checkpoint(update, node=node, parent_id=cursor.checkpoint_id,
                                         step=step, kind="node",
                                         next_node=None if nxt == END else nxt)
            if tree is not None:
                write.workspace_tree = tree
                _add_blobs(write.blobs, files)
        except Exception as exc:
            duration = (time.perf_counter() - t0) * 1000
            return self._failed(run, node, rn.variant, started, duration, exc,
                                len(retries) + 1, retries, _undo_rows(undo, cursor, node, step))
        duration = (time.perf_counter() - t0) * 1000
        self.node_latency.observe(duration)
        done = write.next_node is None
        events = [*retries, ex.event("node.completed", node, step=step, variant=rn.variant,
                                     ms=round(duration, 2))]
        values: dict[str, Any] = {"step": step}
        if done:
            values.update(status=Status.COMPLETED.value, **RELEASE)
            events.append(ex.event("execution.completed", step=step))
        else:
            values["lease_expires_at"] = time.time() + self.lease_seconds
        change = Change(
            ex.id, events, values, fence_owner=self.owner, fence_version=ex.version,
            checkpoint=write,
            boundary={"step": step, "node": node, "variant": rn.variant,
                      "attempt": len(retries) + 1, "entry_checkpoint_id": cursor.checkpoint_id,
                      "status": "completed", "started_at": started, "duration_ms": duration,
                      "error": None, "usage": dumps(ctx.usage) if ctx.usage else None},
            compensations=_undo_rows(undo, cursor, node, step))

        def after(committed: Committed) -> bool:
            ex.step, ex.version = step, committed.version
            ex.head_checkpoint_id = committed.checkpoint_id
            cursor.checkpoint_id, cursor.next_node = committed.checkpoint_id, write.next_node
            self.bus.publish(committed.events)
            if done:
                self._closed(ex, "complete")
                return True
            if committed.control == "stop":
                run.ending = ("stop", ex.event("execution.cancelled", None, cursor.checkpoint_id,
                                               reason="stop requested"))
            elif committed.control == "pause" or node in ex.break_after:
                reason = ("pause requested" if committed.control == "pause"
                          else f"breakpoint after {node}")
                run.ending = ("pause", ex.event("execution.paused", node, cursor.checkpoint_id,
                                                reason=reason))
            return False

        return change, after

    # -- endings ---------------------------------------------------------------------

    def _finish(self, run: Run, action: str, event: Event) -> tuple[Change, After]:
        ex = run.ex
        change = Change(ex.id, [event], {"status": _FINAL[action].value, **RELEASE},
                        fence_owner=self.owner, fence_version=ex.version)

        def after(committed: Committed) -> bool:
            ex.version = committed.version
            self._closed(ex, action)
            self.bus.publish(committed.events)
            return True

        return change, after

    def _failed(self, run: Run, node: str, variant: str | None, started: float,
                duration_ms: float, exc: BaseException, attempts: int = 1,
                retries: list[Event] | None = None,
                undo: list[dict[str, Any]] | None = None) -> tuple[Change, After]:
        ex = run.ex
        error, events, boundary = failures.record(run, node, variant, started, duration_ms,
                                                  exc, attempts, retries)
        change = Change(ex.id, events, {"status": Status.FAILED.value, "error": dumps(error),
                                        **RELEASE},
                        fence_owner=self.owner, fence_version=ex.version, boundary=boundary,
                        compensations=undo)

        def after(committed: Committed) -> bool:
            ex.version, ex.error = committed.version, error
            self._closed(ex, "fail")
            self.bus.publish(committed.events)
            return True

        return change, after

    @staticmethod
    def _closed(ex: Execution, action: str) -> None:
        ex.apply(action)
        ex.lease_owner = ex.lease_expires_at = ex.control = None


def _add_blobs(blobs: list[tuple[str, str, int, bytes]],
               more: list[tuple[str, str, int, bytes]]) -> None:
    """Workspace blobs join the state's in one upsert, which must not name a hash twice."""
    seen = {b[0] for b in blobs}
    blobs.extend(b for b in more if b[0] not in seen)


def _undo_rows(undo: list[dict[str, Any]], cursor: Cursor, node: str,
               step: int) -> list[dict[str, Any]] | None:
    if not undo:
        return None
    return [{**u, "entry_checkpoint_id": cursor.checkpoint_id, "node": node, "step": step}
            for u in undo]


def _leave_workspace(run: Run) -> None:
    """Stop watching the workspace, and keep its stat index for the next resume or fork
    (written when a drive ends and every few seconds of a long one, not at every
    checkpoint: it is a cache, and losing it only costs a re-read)."""
    if run.workspace is None:
        return
    run.workspace.close()
    try:
        run.workspace.save_index()
    except OSError as exc:
        log.warning("could not save the stat index of %s: %s", run.workspace.path, exc)
