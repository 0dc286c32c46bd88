"""Forks: a new execution that starts from any checkpoint of another one."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wtb_ray.domain.errors import NotFound
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.engine import checkpoints, workspaces
from wtb_ray.engine.runner import Cursor
from wtb_ray.engine.state import TrackedState, as_state
from wtb_ray.storage.store import Change
from wtb_ray.workspace import Workspace

if TYPE_CHECKING:
    from wtb_ray.engine.bench import Bench, WorkflowLike

log = logging.getLogger(__name__)


def fork(bench: Bench, execution_id: str, at: int | None = None, *,
         patch: Mapping[str, Any] | None = None, variants: Mapping[str, str] | None = None,
         run: bool = True, workflow: WorkflowLike | None = None,
         labels: Mapping[str, Any] | None = None,
         workspace: workspaces.WorkspaceSpec = None) -> Execution:
    """See Bench.fork."""
    origin, source, (values, manifest, _) = checkpoints.with_state(bench.store, execution_id,
                                                                    at)
    wf = bench.workflow_for(origin, workflow)
    choice = {**origin.variants, **wf.check_choice(dict(variants or {}))}
    choice = {n: v for n, v in choice.items() if (variants or {}).get(n) != "default"}
    patch = as_state(patch, "--patch") if patch is not None else {}
    state = TrackedState(values, manifest, 0)
    write = state.checkpoint(patch, node="patch", parent_id=source.id, step=source.step,
                             kind="fork", next_node=source.next_node, full=True)
    ex = Execution(workflow_name=origin.workflow_name, workflow_ref=origin.workflow_ref,
                   workflow_version=wf.version, variants=choice, step=source.step,
                   parent_execution_id=origin.id, forked_from_checkpoint_id=source.id,
                   labels={**origin.labels, **(labels or {})}, batch_id=None)
    # The fork gets a directory of its own holding the files of the checkpoint it starts at.
    spec = workspace if workspace is not None else (True if origin.workspace else None)
    ignore = (origin.workspace or {}).get("ignore") or bench.settings.workspace_ignore
    ex.workspace = workspaces.config(bench.settings, ex.id, spec, ignore)
    ws = workspaces.open_for(bench.store, bench.settings, ex)
    if ws is not None:
        workspaces.require_empty(str(ws.path))  # before the try: a refusal removes nothing
    if ws is not None and spec is True:
        # WTB's own directory is restored under a staging name and renamed into place once
        # the fork is committed: a process killed before that leaves only a directory
        # `wtb gc` removes. (A directory the user named is restored in place.)
        ws.move(workspaces.staging_dir(bench.settings, ex.id))
    existed = ws is not None and ws.path.exists()
    try:
        if ws is not None:
            # Files the origin's directory still holds unchanged are copied from it.
            local = [origin.workspace["path"]] if origin.workspace else None
            ws.restore(source.workspace_tree, sources=local)
            write.workspace_tree = ws.snapshot() if source.workspace_tree is None else (
                source.workspace_tree)
        events = [ex.event("execution.forked", from_execution_id=origin.id,
                           from_checkpoint_id=source.id, patched_keys=sorted(patch),
                           variants=dict(variants or {}))]
        if run:
            bench.take_lease(ex)
            ex.status = Status.RUNNING
            events.append(ex.event("execution.started"))
        else:
            ex.status = Status.PAUSED
        committed = bench.store.commit(Change(ex.id, events, checkpoint=write,
                                              new_execution=ex))
    except BaseException:
        if ws is not None:
            if not _committed(bench, ex.id):  # no fork: none of its files
                workspaces.discard(ws.path, existed)
            else:  # committed after all; the error raised stays the one to report
                try:
                    _into_place(ws, Path(ex.workspace["path"]), write.workspace_tree)
                except Exception:
                    log.exception("fork %s: its files stay in %s (a resume restores them)",
                                  ex.id, ws.path)
        raise
    if ws is not None:
        _into_place(ws, Path(ex.workspace["path"]), write.workspace_tree)
    bench.created(ex, committed)
    if not run:
        return ex
    return bench.runner.drive(ex, wf, state, Cursor(committed.checkpoint_id, source.next_node),
                              workspace=ws)


def _into_place(ws: Workspace, final: Path, tree: str | None) -> None:
    """Move a committed fork's files from their staging directory to the one it records. If
    the rename fails (something was made there meanwhile), that directory is made to hold
    the fork's files instead, copied from the staging one, which is then removed."""
    staging = ws.path
    if staging == final:
        return
    try:
        ws.move(final)
    except OSError as exc:
        log.warning("could not rename %s to %s (%s); copying the fork's files there instead",
                    staging, final, exc)
        ws.move(final, rename=False)
        ws.restore(tree, sources=[str(staging)])
        shutil.rmtree(staging, ignore_errors=True)


def _committed(bench: Bench, execution_id: str) -> bool:
    """Whether the fork exists after all (a commit can fail after the database took it, as
    when the connection drops on its way back); when that cannot be known, assume it does:
    its files are kept rather than risked."""
    try:
        bench.store.execution(execution_id)
    except NotFound:
        return False
    except Exception:
        return True
    return True
