"""A new execution, validated and ready to commit: what `Bench.create` commits alone and a
batch commits many of in one transaction (engine/group.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from wtb_ray.domain.errors import InvalidInput
from wtb_ray.domain.execution import Execution
from wtb_ray.domain.graph import Workflow
from wtb_ray.engine import workspaces
from wtb_ray.engine.loader import ref_of
from wtb_ray.engine.state import TrackedState, as_state
from wtb_ray.storage.store import Change

if TYPE_CHECKING:
    from wtb_ray.engine.bench import Bench


def prepare(bench: Bench, wf: Workflow, input: Mapping[str, Any] | None, *,
            variants: Mapping[str, str] | None = None, break_before: Iterable[str] = (),
            break_after: Iterable[str] = (), labels: Mapping[str, Any] | None = None,
            batch_id: str | None = None, execution_id: str | None = None,
            running: bool = False, workspace: workspaces.WorkspaceSpec = None,
            workspace_ignore: Iterable[str] = ()
            ) -> tuple[Execution, Change, TrackedState, workspaces.Workspace | None]:
    """A new execution, the change that persists it (validated, not yet committed), its
    state, and its workspace if it has one (already recorded in the start checkpoint)."""
    ex = Execution(
        workflow_name=wf.name, workflow_ref=ref_of(wf), workflow_version=wf.version,
        variants=wf.check_choice(dict(variants or {})),
        break_before=wf.check_nodes(break_before, "--break-before"),
        break_after=wf.check_nodes(break_after, "--break-after"),
        labels=dict(labels or {}), batch_id=batch_id)
    if execution_id:
        ex.id = execution_id
    ignore = [*bench.settings.workspace_ignore, *workspace_ignore]
    ex.workspace = workspaces.config(bench.settings, ex.id, workspace, ignore)
    if ex.workspace is None and list(workspace_ignore):
        raise InvalidInput("workspace ignore patterns need a workspace")
    state = TrackedState.empty()
    write = state.checkpoint(as_state(input, "input"), node="input", parent_id=None,
                             step=0, kind="start", next_node=wf.entry)
    ws = workspaces.open_for(bench.store, bench.settings, ex)
    if ws is not None:
        write.workspace_tree = ws.snapshot()
    events = [ex.event("execution.created", workflow=wf.name, variants=ex.variants)]
    if running:
        bench.take_lease(ex)
        ex.apply("start")
        events.append(ex.event("execution.started"))
    return ex, Change(ex.id, events, checkpoint=write, new_execution=ex), state, ws
