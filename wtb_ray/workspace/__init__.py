"""Workspace directories whose files follow checkpoints, rollback and fork.

An execution may own a directory (``ctx.workspace``). At each checkpoint its files are recorded
as a tree of content-addressed chunks in the blob store; rollback and fork make a directory
hold exactly the files of a checkpoint again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.workspace import collector
from wtb_ray.workspace.ignore import RESERVED, IgnoreRules
from wtb_ray.workspace.index import StatIndex
from wtb_ray.workspace.restore import Restore
from wtb_ray.workspace.snapshot import DirKeys, Snapshot, Trees, Uploader
from wtb_ray.workspace.tree import EMPTY_TREE, TreeReader

# A run's checkpoints save the stat index at most this often (it is also saved when the run
# stops): a process killed mid-run then re-reads only what changed in its last seconds.
INDEX_SAVE_S = 5.0


class Workspace:
    """One execution's directory, bound to a store. Not thread-safe: one runner at a time.

    ``known`` holds the blobs this object has seen stored (uploaded, or reached by a tree it
    restored): only those are skipped without asking the store.
    """

    def __init__(self, path: str | Path, store: Any, ignore: list[str] | None = None,
                 max_file_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        self.store = store
        self.rules = IgnoreRules(ignore or [])
        self.max_file_bytes = max_file_bytes
        self.known: set[str] = set()
        self.reader = TreeReader(store)
        self._index: StatIndex | None = None
        self._trees: Trees = {}  # the last snapshot's directories (a memo of their hashes)
        self._dir_keys: DirKeys = {}  # and which of them need not be listed again
        self._index_saved_at = time.monotonic()
        self.last_files_read = 0

    @property
    def index(self) -> StatIndex:
        if self._index is None:
            self._index = StatIndex.load(self.path)
        return self._index

    def snapshot(self) -> str:
        """Record the directory; returns its root tree hash (every blob already stored)."""
        with collector.paused:
            root, _ = self._snapshot(inline=False)
            self.save_index()
        return root

    def snapshot_for_commit(self) -> tuple[str, list[tuple[str, str, int, bytes]]]:
        """Record the directory for a checkpoint: (root tree, new blobs small enough to be
        written in the checkpoint's own transaction). Larger uploads are done already. The
        stat index is saved every INDEX_SAVE_S, not at each checkpoint (a cache: losing it
        costs a re-read), and by ``save_index``."""
        with collector.paused:
            result = self._snapshot(inline=True)
            if time.monotonic() - self._index_saved_at >= INDEX_SAVE_S:
                self.save_index()
        return result

    def _snapshot(self, inline: bool) -> tuple[str, list[tuple[str, str, int, bytes]]]:
        with self._naming_the_file("cannot be recorded"):
            if not self.path.is_dir():  # a failed mkdir costs more than a stat
                self.path.mkdir(parents=True, exist_ok=True)
            snap = Snapshot(str(self.path), self.rules, self.index,
                            Uploader(self.store, self.known), self.max_file_bytes, self._trees,
                            self.reader.cache, self._dir_keys)
            result = snap.run(inline)
        self.last_files_read = snap.files_read
        return result

    @contextmanager
    def _naming_the_file(self, what: str) -> Iterator[None]:
        """A file system error (no space left, permission denied, a file where a directory
        should be) as a WorkspaceError naming the path: one line for the CLI and the API."""
        try:
            yield
        except OSError as exc:
            path = os.fsdecode(exc.filename) if exc.filename is not None else str(self.path)
            raise WorkspaceError(path, f"{what}: {exc.strerror or exc}") from exc

    def move(self, path: str | Path, rename: bool = True) -> None:
        """Go on at ``path``, renaming the directory there if it exists (unless not
        ``rename``). The stat index stays valid: a rename keeps every file's inode and
        times."""
        path = Path(path)
        if rename and self.path.exists():
            os.rename(self.path, path)
        self.path = path
        if self._index is not None:
            self._index.dir = path / RESERVED

    def save_index(self) -> None:
        if self._index is not None:
            self._index.save()
        self._index_saved_at = time.monotonic()

    def restore(self, root_tree: str | None, sources: list[str] | None = None) -> None:
        """Make the directory hold exactly the files of ``root_tree`` (None: no files).
        ``sources``: directories (another execution's workspace) to copy unchanged files
        from, where their stat index vouches for them, instead of the store."""
        with collector.paused, self._naming_the_file("cannot be restored"):
            job = Restore(str(self.path), self.rules, self.index, self.reader, self.store,
                          sources)
            job.run(root_tree or EMPTY_TREE)
            if root_tree:  # a checkpoint's tree: the store holds every blob it reaches
                self.known.update(job.reached)
            self._trees = job.trees  # the next snapshot re-encodes only the directories it changed
            self._dir_keys = job.dir_keys  # and lists only those the restore changed


__all__ = ["EMPTY_TREE", "IgnoreRules", "TreeReader", "Workspace"]
