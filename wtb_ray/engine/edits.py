"""Changes made by hand to a pending, paused or completed execution's workspace, found
before a start, resume or rollback would overwrite them.

No node made them and no checkpoint recorded them, so overwriting them would lose them for
good. Without a word from the caller the action is refused (WorkspaceEdited, naming them);
"keep" (start or resume) records the directory as it is in a patch checkpoint and goes on
from it; "discard" puts back the checkpoint's files and names what it dropped
in the history. A failed run's directory is not looked at: what a failed node left half
written is what a resume must put back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wtb_ray.domain.errors import InvalidInput, WorkspaceEdited
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.engine import workspaces

if TYPE_CHECKING:
    from wtb_ray.engine.bench import Bench

KEEP, DISCARD = "keep", "discard"
CHOICES = {"start": (KEEP, DISCARD), "resume": (KEEP, DISCARD), "rollback": (DISCARD,)}
IN_EVENT = 20  # changes named in the history (all are counted)
IN_ERROR = 3  # and in a refusal
# Where the directory should hold the head's files: the run stopped at a node boundary, or
# was created (its first checkpoint recorded the directory) and not started yet.
CHECKED = (Status.PENDING, Status.PAUSED, Status.COMPLETED)


@dataclass(frozen=True)
class Edits:
    path: str  # the workspace
    checkpoint_id: int  # the head they were made on
    tree: str  # the directory as it is (stored only when kept)
    changes: list[tuple[str, str]]  # (path, "added" | "modified" | "removed")

    def named(self, limit: int) -> list[str]:
        return [f"{what} {path}" for path, what in self.changes[:limit]]


def check_choice(action: str, choice: str | None) -> None:
    allowed = CHOICES[action]
    if choice is not None and choice not in allowed:
        raise InvalidInput(f"workspace_edits for a {action} is one of "
                           f"{', '.join(map(repr, allowed))}, not {choice!r}")


def find(bench: Bench, ex: Execution, record: bool = False) -> Edits | None:
    """The hand edits in ``ex``'s workspace (see CHECKED), or None. Nothing is written to
    the store unless ``record`` (to keep them)."""
    if ex.status not in CHECKED or not ex.workspace or ex.head_checkpoint_id is None:
        return None
    ws = workspaces.open_for(bench.store, bench.settings, ex)
    assert ws is not None
    if not ws.path.is_dir():  # nothing there to lose (removed whole, or another node's)
        return None
    if ws.restore_unfinished():  # what differs is a failed restore's doing: finish it
        return None
    head = bench.store.checkpoint(ex.head_checkpoint_id)
    tree, changes = ws.scan(head.workspace_tree, record=record)
    return Edits(str(ws.path), head.id, tree, changes) if changes else None


def settle(bench: Bench, ex: Execution, action: str, choice: str | None
           ) -> tuple[Edits | None, dict[str, Any]]:
    """Refuse the ``action`` if ``ex``'s workspace was edited (see CHECKED), unless
    ``choice`` says what to do. Returns the edits to keep (their tree stored), if kept,
    and what the action's event should say about them."""
    check_choice(action, choice)
    found = find(bench, ex, record=choice == KEEP)
    if found is None:
        return None, {}
    if choice is None:
        raise WorkspaceEdited(ex.id, ex.status.value, action, found.path, found.checkpoint_id,
                              found.named(IN_ERROR), len(found.changes))
    said = {f"{'kept' if choice == KEEP else 'discarded'}_edits": found.named(IN_EVENT),
            "edits": len(found.changes)}
    return (found if choice == KEEP else None), said
