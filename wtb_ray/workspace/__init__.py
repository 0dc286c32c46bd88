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
from wtb_ray.workspace.snapshot import DirKeys, Snapshot, Trees
from wtb_ray.workspace.tree import EMPTY_TREE, TreeOverlay, TreeReader
from wtb_ray.workspace.uploader import DryRun, Uploader
from wtb_ray.workspace.watch import Watch

# A run's checkpoints save the stat index at most this often (it is also saved when the run
# stops): a process killed mid-run then re-reads only what changed in its last seconds.
INDEX_SAVE_S = 5.0
# Made in WTB's own directory (RESERVED) when a restore into an existing directory begins,
# removed when it ends (or, for a rollback, once the head it restored to is committed): while
# it is there, what differs from the head is a failed or killed restore's doing, not hand
# edits (engine/edits.py), and the next restore finishes it.
RESTORING = "restoring"


class Workspace:
    """One execution's directory, bound to a store. Not thread-safe: one runner at a time.

    ``known`` holds the blobs this object has seen stored (uploaded, or reached by a tree it
    restored): only those are skipped without asking the store.

    With ``watch``, a run's checkpoints watch the directory (workspace/watch.py) and examine
    only what changed since the last one; ``close()`` stops watching.
    """

    def __init__(self, path: str | Path, store: Any, ignore: list[str] | None = None,
                 max_file_bytes: int = 1 << 30, watch: bool = False) -> None:
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
        self.last_examined = 0  # paths the last snapshot stat-ed
        self.watching = watch
        self._watch: Watch | None = None
        self._linked: set[str] = set()  # files with more than one link (see watch.py)

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
        costs a re-read), and by ``save_index``. Starts watching the directory if asked to:
        the checkpoints after this one examine only what changed."""
        if self.watching and (self._watch is None or self._watch.broken):
            self.close()
            self._watch = Watch.start(self.rules.ignored)
        with collector.paused:
            result = self._snapshot(inline=True)
            if time.monotonic() - self._index_saved_at >= INDEX_SAVE_S:
                self.save_index()
        return result

    def _snapshot(self, inline: bool) -> tuple[str, list[tuple[str, str, int, bytes]]]:
        watch = self._watch
        dirty = watch.changes() if watch is not None else None
        if dirty is not None:
            dirty |= self._linked
        try:
            with self._naming_the_file("cannot be recorded"):
                if not self.path.is_dir():  # a failed mkdir costs more than a stat
                    self.path.mkdir(parents=True, exist_ok=True)
                snap = Snapshot(str(self.path), self.rules, self.index,
                                Uploader(self.store, self.known), self.max_file_bytes,
                                self._trees, self.reader.cache, self._dir_keys, watch, dirty)
                result = snap.run(inline)
        except BaseException:
            if watch is not None:  # the events it read are spent: examine everything next
                watch.give_up("a snapshot failed")
            raise
        if watch is not None and not watch.broken:
            watch.ready = True
        self._linked = snap.linked
        self.last_files_read = snap.files_read
        self.last_examined = snap.examined
        return result

    def restore_unfinished(self) -> bool:
        """Whether a restore into the directory began and did not finish (see RESTORING)."""
        return (self.path / RESERVED / RESTORING).exists()

    def restore_done(self) -> None:
        """The head a ``restore(..., then_commit=True)`` made the files match is committed."""
        (self.path / RESERVED / RESTORING).unlink(missing_ok=True)

    def scan(self, against: str | None, record: bool = False
             ) -> tuple[str, list[tuple[str, str]]]:
        """What the directory holds now against the tree ``against`` (a checkpoint's: the
        store holds every blob it reaches): (the tree it holds, [(path, "added" | "modified"
        | "removed")] in path order). Files the stat index vouches for are not read. With
        ``record`` the tree's new blobs are stored, as by ``snapshot``; else nothing is
        written to the store. The directory must exist."""
        root, differences = self.compare(against, record)
        changes: list[tuple[str, str]] = []
        for path, x, y in differences:
            if changes and changes[-1][0] == path:  # a file now an empty directory, or back
                changes[-1] = (path, "modified")
            else:
                changes.append((path, "added" if x is None else "removed" if y is None
                                else "modified"))
        return root, changes

    def compare(self, against: str | None, record: bool = False
                ) -> tuple[str, list[tuple[str, list[Any] | None, list[Any] | None]]]:
        """As ``scan``, with each difference as (path, its entry in ``against``, its entry
        now), as TreeReader.diff gives them (a path whose type changed may come twice)."""
        against = against or EMPTY_TREE
        self.known.update(self.reader.blobs(against))  # what the index vouches for: not read
        reader = self.reader
        if record:
            root = self.snapshot()
        else:
            with collector.paused, self._naming_the_file("cannot be recorded"):
                # Its trees are not stored: kept out of the store's tree cache and out of
                # this object's memo of the last snapshot's directories.
                snap = Snapshot(str(self.path), self.rules, self.index, DryRun(self.known),
                                self.max_file_bytes, {}, None, {})
                root, _ = snap.run()
            self.save_index()
            reader = TreeOverlay(self.store, {h: entries for entries, h in snap.trees.values()})
        return root, list(reader.diff(against, root))

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
        self.close()  # its watches would name the old paths
        if rename and self.path.exists():
            os.rename(self.path, path)
        self.path = path
        if self._index is not None:
            self._index.dir = path / RESERVED

    def close(self) -> None:
        """Stop watching the directory (a later checkpoint examines every file again)."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def save_index(self) -> None:
        if self._index is not None:
            self._index.save()
        self._index_saved_at = time.monotonic()

    def restore(self, root_tree: str | None, sources: list[str] | None = None,
                watch: bool = False, then_commit: bool = False) -> None:
        """Make the directory hold exactly the files of ``root_tree`` (None: no files).
        ``sources``: directories (another execution's workspace) to copy unchanged files
        from, where their stat index vouches for them, instead of the store. ``watch``
        (before a run, if the object watches): watch every directory from before the
        restore looks into it, so that the run's first checkpoint examines only what
        changed since. ``then_commit``: the caller commits the head the files now match
        and calls ``restore_done`` after (till then the restore counts as unfinished)."""
        self.close()
        if watch and self.watching:
            self._watch = Watch.start(self.rules.ignored)
        marker = self.path / RESERVED / RESTORING
        marked = self.path.is_dir() and _made(marker)  # a new directory holds nothing to judge
        try:
            with collector.paused, self._naming_the_file("cannot be restored"):
                job = Restore(str(self.path), self.rules, self.index, self.reader, self.store,
                              sources, self._watch)
                job.run(root_tree or EMPTY_TREE)
        except BaseException:
            self.close()
            raise
        if marked and not then_commit:
            marker.unlink(missing_ok=True)
        if root_tree:  # a checkpoint's tree: the store holds every blob it reaches
            self.known.update(job.reached)
        self._trees = job.trees  # the next snapshot re-encodes only the directories it changed
        self._dir_keys = job.dir_keys  # and lists only those the restore changed
        self._linked = job.linked
        if self._watch is not None and not self._watch.broken:
            self._watch.ready = True


def _made(path: Path) -> bool:
    """Create an empty file at ``path`` (and its directory); False if that failed."""
    try:
        path.parent.mkdir(exist_ok=True)
        path.touch()
    except OSError:
        return False
    return True


__all__ = ["EMPTY_TREE", "IgnoreRules", "TreeReader", "Workspace"]
