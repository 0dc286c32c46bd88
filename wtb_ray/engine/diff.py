"""What a checkpoint's workspace holds, and how two checkpoints differ (state and files)."""

from __future__ import annotations

import difflib
import itertools
import json
from typing import Any

from wtb_ray.domain.checkpoint import Checkpoint
from wtb_ray.storage import blob_io
from wtb_ray.workspace import TreeReader
from wtb_ray.workspace.tree import content_id

TEXT_DIFF_MAX = 256 * 1024  # bytes per side; larger files are reported without a text diff


def describe(path: str, entry: list[Any]) -> dict[str, Any]:
    kind = entry[0]
    if kind == "f":
        return {"path": path, "type": "file", "size": entry[2], "mode": oct(entry[1]),
                "hash": content_id(entry) if entry[3] else None, "chunks": len(entry[3])}
    if kind == "l":
        return {"path": path, "type": "symlink", "target": entry[1]}
    return {"path": path, "type": "dir"}


def files(store: Any, checkpoint: Checkpoint, offset: int = 0,
          limit: int | None = None) -> list[dict[str, Any]]:
    """The checkpoint's paths in walk order (parents first, names sorted); ``offset`` and
    ``limit`` take a page of them without describing the rest."""
    if checkpoint.workspace_tree is None:
        return []
    stop = None if limit is None else offset + limit
    walk = TreeReader(store).walk(checkpoint.workspace_tree)
    return [describe(p, e) for p, e in itertools.islice(walk, offset, stop)]


def _text(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.splitlines(keepends=True)
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").splitlines(
        keepends=True)


def unified(a: Any, b: Any, name: str, label_a: str, label_b: str) -> str:
    lines = difflib.unified_diff(_text(a), _text(b), f"{label_a}/{name}", f"{label_b}/{name}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def _file_text(store: Any, entry: list[Any] | None) -> str | None:
    """A small regular file's text, or None (binary, too large, or not a file)."""
    if entry is None:
        return ""
    if entry[0] != "f" or entry[2] > TEXT_DIFF_MAX:
        return None
    data = store.run(blob_io.fetch, entry[3])
    raw = b"".join(data[c] for c in entry[3])
    if b"\0" in raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def diff(store: Any, a: Checkpoint, b: Checkpoint) -> dict[str, Any]:
    """State keys and workspace files that differ between checkpoints ``a`` and ``b``."""
    state_a, state_b = store.state_at(a.id)[0], store.state_at(b.id)[0]
    la, lb = f"checkpoint-{a.id}", f"checkpoint-{b.id}"
    state: dict[str, Any] = {"added": {}, "removed": {}, "changed": {}}
    for key in sorted(state_a.keys() | state_b.keys()):
        if key not in state_a:
            state["added"][key] = state_b[key]
        elif key not in state_b:
            state["removed"][key] = state_a[key]
        elif state_a[key] != state_b[key]:
            text = (unified(state_a[key], state_b[key], key, la, lb)
                    if isinstance(state_a[key], str) and isinstance(state_b[key], str) else None)
            state["changed"][key] = {"a": state_a[key], "b": state_b[key], "diff": text}
    changes: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    for path, x, y in TreeReader(store).diff(a.workspace_tree, b.workspace_tree):
        if x is None:
            changes["added"].append(describe(path, y))
        elif y is None:
            changes["removed"].append(describe(path, x))
        else:
            item = {"path": path, "a": describe(path, x), "b": describe(path, y), "diff": None}
            old, new = _file_text(store, x), _file_text(store, y)
            if old is not None and new is not None and old != new:
                item["diff"] = unified(old, new, path, la, lb)
            changes["changed"].append(item)
    return {"a": a.id, "b": b.id, "state": state, "files": changes}
