"""Where an execution's workspace lives and how a process opens it."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wtb_ray.config import Settings
from wtb_ray.domain.errors import InvalidInput
from wtb_ray.domain.execution import Execution
from wtb_ray.workspace import IgnoreRules, Workspace
from wtb_ray.workspace.ignore import RESERVED

WorkspaceSpec = bool | str | Path | None


# A fork restores WTB's directory for it under this prefix and renames it into place once the
# fork is committed: a fork process killed midway leaves a directory no execution names, that
# `wtb gc` can tell apart from any execution's workspace (of any database sharing WTB_HOME).
STAGING = ".forking-"
# A deleted execution's directory is renamed to this prefix before it is removed: what cannot
# be removed then (a file the file system refuses to unlink, a process killed midway) stays
# under a name that says it is garbage, and `wtb gc` removes it later.
DELETED = ".deleted-"


def managed_dir(settings: Settings, execution_id: str) -> Path:
    return settings.home.expanduser() / "workspaces" / execution_id


def staging_dir(settings: Settings, execution_id: str) -> Path:
    return settings.home.expanduser() / "workspaces" / f"{STAGING}{execution_id}"


def deleted_dir(settings: Settings, execution_id: str) -> Path:
    return settings.home.expanduser() / "workspaces" / f"{DELETED}{execution_id}"


def unfinished_forks(settings: Settings, grace_seconds: float) -> list[Path]:
    """Directories of forks whose process died before the fork was committed (or before it
    renamed the directory into place), untouched for ``grace_seconds``: the grace period
    spares a fork whose restore began within it (the directory's mtime is when the restore
    made it, or last changed its top-level entries)."""
    cutoff = time.time() - grace_seconds
    return [path for path, st in _dirs_named(settings, STAGING) if st.st_mtime < cutoff]


def deleted_leftovers(settings: Settings) -> list[Path]:
    """What deleting executions left of their directories (any age: their rows are gone)."""
    return [path for path, _ in _dirs_named(settings, DELETED)]


def _dirs_named(settings: Settings, prefix: str) -> list[tuple[Path, os.stat_result]]:
    """Directories under WTB_HOME/workspaces whose names start with ``prefix``, sorted, with
    their stat. Directories only: a link of such a name is neither followed nor reported."""
    parent = settings.home.expanduser() / "workspaces"
    found = []
    for path in parent.glob(f"{prefix}*") if parent.is_dir() else ():
        try:
            st = path.lstat()
        except FileNotFoundError:  # removed meanwhile
            continue
        if stat.S_ISDIR(st.st_mode):
            found.append((path, st))
    return sorted(found, key=lambda item: item[0])


def config(settings: Settings, execution_id: str, spec: WorkspaceSpec,
           patterns: Iterable[str]) -> dict[str, Any] | None:
    """The workspace an execution records: {"path", "ignore"}; validated, nothing created.
    ``spec``: True for a directory under WTB_HOME/workspaces/<execution id>, or a path."""
    patterns = list(patterns)
    if spec is None or spec is False:
        return None
    if spec is True:
        path = managed_dir(settings, execution_id)
    elif isinstance(spec, (str, Path)) and str(spec):
        path = Path(spec).expanduser().resolve()
    else:
        raise InvalidInput(f"workspace must be True or a directory path, got {spec!r}")
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"workspace {str(path)!r} exists and is not a directory")
    _check_can_make(path)
    return {"path": str(path), "ignore": IgnoreRules(patterns).patterns}


def _check_can_make(path: Path) -> None:
    """Refuse, before anything is written, a directory that could not be made: the first
    existing path above it must be a directory this process may write in."""
    above = path
    while not above.exists():
        above = above.parent
    if above == path:
        return
    if not above.is_dir():
        raise InvalidInput(f"workspace {str(path)!r} cannot be made: {str(above)!r} is not a "
                           "directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise InvalidInput(f"workspace {str(path)!r} cannot be made: no permission to write "
                           f"in {str(above)!r}")


def require_empty(path: str) -> None:
    """A fork restores into a directory of its own: refuse one that already holds files."""
    p = Path(path)
    if p.is_dir() and any(child.name != RESERVED for child in p.iterdir()):
        raise InvalidInput(f"workspace {path!r} for the fork is not empty; give a new "
                           "directory (or none: one is made under WTB_HOME/workspaces)")


def open_for(store: Any, settings: Settings, ex: Execution) -> Workspace | None:
    if not ex.workspace:
        return None
    return Workspace(ex.workspace["path"], store, ex.workspace.get("ignore") or [],
                     settings.workspace_max_file_bytes, watch=settings.workspace_watch)


def open_here(store: Any, settings: Settings, ex: Execution) -> Workspace:
    """``ex``'s workspace, refused (naming it) if it has none or its directory is not here:
    for looking at what the directory holds now."""
    ws = open_for(store, settings, ex)
    if ws is None:
        raise InvalidInput(f"execution {ex.id} has no workspace")
    if not ws.path.is_dir():
        raise InvalidInput(f"workspace {str(ws.path)!r} of execution {ex.id} is not on this "
                           "machine (removed, or made on another one)")
    return ws


def remove_managed(settings: Settings, execution_id: str) -> str | None:
    """Remove a deleted execution's workspace if WTB made it (under WTB_HOME/workspaces);
    a directory the user named is theirs to keep. None once it is gone, else what is left
    and why (renamed first, so what is left is `wtb gc`'s to remove)."""
    path = managed_dir(settings, execution_id)
    doomed = deleted_dir(settings, execution_id)
    try:
        os.rename(path, doomed)
    except FileNotFoundError:  # none was made (or another process renamed it)
        return remove_dir(doomed) if doomed.exists() else None
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return remove_dir(doomed)


def remove_dir(path: Path) -> str | None:
    """Remove a directory tree; None once it is gone, else the first path that could not be
    removed and why (the rest is removed all the same)."""
    failed: list[str] = []

    def note(func: object, where: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):  # another remover got there first
            return
        if not failed:
            failed.append(f"{where}: {getattr(exc, 'strerror', None) or exc}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=note)
    else:  # onerror gets (type, value, traceback)
        shutil.rmtree(path, onerror=lambda f, where, info: note(f, where, info[1]))
    return failed[0] if failed else None


def discard(path: Path, existed: bool) -> None:
    """Undo a fork's restore that did not lead to a fork: remove the directory if the restore
    made it, else what it wrote there (the directory was empty but for WTB's ``.wtb``)."""
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir() if path.is_dir() else ():
        if child.name == RESERVED:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
