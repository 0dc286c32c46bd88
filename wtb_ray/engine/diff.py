"""What a checkpoint's workspace holds, and how two checkpoints differ (state and files)."""

from __future__ import annotations

import difflib
import itertools
import json
import os
from collections.abc import Iterable
from typing import Any

from wtb_ray.domain.checkpoint import Checkpoint
from wtb_ray.storage import blob_io
from wtb_ray.workspace import TreeReader
from wtb_ray.workspace.tree import content_id

TEXT_DIFF_MAX = 256 * 1024  # bytes per side; larger files are reported without a text diff
# Of file bytes read for one diff's unified diffs: past it, changed files are listed without
# one (and counted), so that a diff of thousands of changed files answers in bounded time and
# size (2,000 changed 8 KB text files took 0.9-1.1 s and made a 25 MB answer). Read at most
# FETCH_BYTES per transaction: a transaction per file took half of such a diff's time.
TEXT_DIFF_TOTAL = 8 << 20
FETCH_BYTES = 4 << 20


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


def _may_be_text(x: list[Any], y: list[Any]) -> bool:
    """Whether two entries of a path are regular files with different contents, each small
    enough for a text diff."""
    return (x[0] == y[0] == "f" and x[2] <= TEXT_DIFF_MAX and y[2] <= TEXT_DIFF_MAX
            and x[3] != y[3])


def _text_of(chunks: list[str], data: dict[str, bytes]) -> str | None:
    """A file's text from its chunks, or None if it is binary (a NUL, or not UTF-8)."""
    return _decoded(b"".join(data[c] for c in chunks))


def _text_on_disk(path: str) -> str | None:
    """A file's text as it is now, or None if it is binary, gone (or no longer a file) or
    grown past the limit."""
    try:
        # A link put there since is not followed; a directory fails to read.
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            raw = f.read(TEXT_DIFF_MAX + 1)
    except OSError:
        return None
    return _decoded(raw) if len(raw) <= TEXT_DIFF_MAX else None


def _decoded(raw: bytes) -> str | None:
    if b"\0" in raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


Changed = tuple[dict[str, Any], list[Any], list[Any]]  # (item, entry in a, entry in b)


def _text_diffs(store: Any, changed: list[Changed], la: str, lb: str, budget: int,
                live: str | None = None) -> int:
    """Set the unified diff of each changed item whose two sides are text, reading at most
    ``budget`` bytes of files, FETCH_BYTES or so per transaction. Items that may be text
    and were left without a diff once the budget was spent get ``diff_left_out``; returns
    their count. With ``live`` (a directory) the second side is read from there, not from
    the store."""
    batches: list[list[Changed]] = [[]]
    size = left_out = 0
    for c in changed:
        if not _may_be_text(c[1], c[2]):
            continue
        n = c[1][2] + c[2][2]
        if n > budget:
            c[0]["diff_left_out"] = True
            left_out += 1
            budget = 0  # in order: none after the first left out, even a smaller one
            continue
        budget -= n
        if size + n > FETCH_BYTES and batches[-1]:
            batches.append([])
            size = 0
        batches[-1].append(c)
        size += n
    for batch in batches:
        if not batch:
            continue
        data = store.run(blob_io.fetch, {h for _, x, y in batch
                                         for h in (x[3] if live else (*x[3], *y[3]))})
        for item, x, y in batch:
            old = _text_of(x[3], data)
            new = (_text_on_disk(os.path.join(live, item["path"])) if live
                   else _text_of(y[3], data))
            # The same text under other chunk names (a store from before BLAKE3): no diff.
            if old is not None and new is not None and old != new:
                item["diff"] = unified(old, new, item["path"], la, lb)
    return left_out


def diff(store: Any, a: Checkpoint, b: Checkpoint,
         text_budget: int = TEXT_DIFF_TOTAL) -> dict[str, Any]:
    """State keys and workspace files that differ between checkpoints ``a`` and ``b``; text
    files changed get a unified diff while ``text_budget`` bytes of them are read, and
    ``text_diffs_left_out`` counts those that may be text and got none for want of it."""
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
    changes, changed = _file_changes(TreeReader(store).diff(a.workspace_tree, b.workspace_tree))
    left_out = _text_diffs(store, changed, la, lb, text_budget)
    return {"a": a.id, "b": b.id, "state": state, "files": changes,
            "text_diffs_left_out": left_out}


def diff_directory(store: Any, a: Checkpoint, path: str,
                   differences: Iterable[tuple[str, Any, Any]],
                   text_budget: int = TEXT_DIFF_TOTAL) -> dict[str, Any]:
    """Workspace files that differ between checkpoint ``a`` and the directory ``path`` as it
    is now (``differences``: Workspace.compare's), as ``diff`` gives them, the text of the
    directory's side read from the directory. ``b`` is None and ``state`` None: a directory
    has no state."""
    changes, changed = _file_changes(differences)
    left_out = _text_diffs(store, changed, f"checkpoint-{a.id}", "workspace", text_budget,
                           live=path)
    return {"a": a.id, "b": None, "workspace": path, "state": None, "files": changes,
            "text_diffs_left_out": left_out}


def _file_changes(differences: Iterable[tuple[str, Any, Any]]
                  ) -> tuple[dict[str, list[dict[str, Any]]], list[Changed]]:
    changes: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    changed: list[Changed] = []
    for path, x, y in differences:
        if x is None:
            changes["added"].append(describe(path, y))
        elif y is None:
            changes["removed"].append(describe(path, x))
        else:
            item = {"path": path, "a": describe(path, x), "b": describe(path, y), "diff": None}
            changes["changed"].append(item)
            changed.append((item, x, y))
    return changes, changed
