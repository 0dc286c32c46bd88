"""Making a directory hold exactly the files of a tree.

Files that are already right (the stat index vouches for them, or their bytes hash to the
tree's chunks) are left alone; the rest are copied from a local source directory when its
stat index vouches that its file holds those bytes (a fork copies from its origin's
workspace, in the kernel, like `cp`), else written from the store, fetching chunks in
batches of bounded size. Paths the tree lacks are removed unless ignored. Symbolic links are
never followed: a link where the tree has a directory or file is replaced, not written through.

This module decides what to write; workspace/writer.py writes it.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

from wtb_ray.storage import codec
from wtb_ray.workspace import tree
from wtb_ray.workspace.ignore import IgnoreRules
from wtb_ray.workspace.index import DirKey, StatIndex, dir_key
from wtb_ray.workspace.lanes import Copy, Source, Write
from wtb_ray.workspace.watch import Watch
from wtb_ray.workspace.writer import Writer


class Restore:
    def __init__(self, root: str, rules: IgnoreRules, index: StatIndex, reader: tree.TreeReader,
                 store: Any, sources: list[str] | None = None, watch: Watch | None = None) -> None:
        self.root = root
        self.watch = watch  # each directory is watched before it is listed or made
        self.sources = [(src, StatIndex.load(Path(src))) for src in sources or []
                        if os.path.isdir(src)]
        self.rules = rules
        self.index = index
        self.reader = reader
        self.store = store
        self.fresh: dict[str, Any] = {}
        # Files to write once every directory is synced: those a source has are copied from
        # it (``local``: a list per directory), the rest written from the store (``remote``).
        self.local: list[list[Copy]] = []
        self.remote: list[Write] = []
        self.writer = Writer(store)
        self.touched: list[tuple[str, str, list[str]]] = []  # chmod-ed or hashed: re-stat
        # Directories the tree has and the disk lacks, parents first: (path, prefix).
        self.new_dirs: list[tuple[str, str]] = []
        self.linked: set[str] = set()  # files left as they were that have other links
        self.removed = 0
        # What it removed (files, and directories removed whole): their fingerprints leave
        # the index.
        self.removed_files: set[str] = set()
        self.removed_dirs: list[str] = []
        # What the restored directory now holds: each directory's (entries, tree hash), as a
        # snapshot memoises them, and every blob the tree reaches.
        self.trees: dict[str, tuple[tree.Entries, str]] = {}
        self.reached: set[str] = set()
        # Directories this restore listed and left as they were, for the next snapshot not
        # to list again (see snapshot.Snapshot), with a clock taken before any was looked at.
        self.dir_keys: dict[str, DirKey] = {}
        self.clock_before = 0

    def run(self, root_tree: str) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.clock_before = self.index.clock()
        self._sync(self.root, "", root_tree)
        self.writer.run(self.new_dirs, self.watch, self.local, self.remote)
        clock = self.index.clock()  # after every write: the files we wrote can be trusted
        stats = [(rel, chunks, os.lstat(path)) for path, rel, chunks in self.touched]
        for rel, chunks, st in self.writer.written + stats:
            entry = StatIndex.entry(st, chunks, clock)
            if entry is not None:
                self.fresh[rel] = entry
        quick = self.index.quick
        if self.removed_files or self.removed_dirs:  # a watched run's snapshots keep the rest
            gone, under = self.removed_files, tuple(self.removed_dirs)
            quick = {rel: pairs for rel, pairs in quick.items()
                     if rel not in gone and not rel.startswith(under)}
        self.index.replace(self.fresh, quick)
        self.index.save()
        # Drop the per-file lists while the collector is still paused (the caller's pause
        # ends before this object goes): freed now, they never count towards a collection;
        # kept, the first allocation after the pause collected all of them (~1 ms a 200 MB
        # fork) and promoted them towards a full collection.
        self.local, self.remote, self.touched, self.fresh = [], [], [], {}
        self.writer = Writer(self.store)

    def _sync(self, path: str, prefix: str, tree_hash: str, new: bool = False) -> None:
        """Make ``path`` hold the tree ``tree_hash``; ``new``: ``path`` is yet to be made (it
        holds nothing)."""
        entries = self.reader.get(tree_hash)
        self.trees[prefix] = (entries, tree_hash)
        self.reached.add(tree_hash)
        present: dict[str, os.DirEntry[str]] = {}
        if self.watch is not None and not new:
            self.watch.add(path, prefix)
        key = None if new else dir_key(os.lstat(path), self.clock_before)  # before listing
        changed = False  # whether this directory's names change here
        if not new:
            with os.scandir(path) as it:
                present = {e.name: e for e in it}
        for name, item in present.items():
            if name in entries:
                continue
            is_dir = item.is_dir(follow_symlinks=False)
            if not self.rules.ignored(prefix + name, name, is_dir):
                if not self._remove(item.path, prefix + name, is_dir):
                    # A directory the tree lacks stays, holding ignored paths: this one now
                    # holds more than the tree, so the next snapshot must list it.
                    self.trees.pop(prefix, None)
                changed = True
        writes: list[Write] = []
        for name, entry in entries.items():
            # Joined by hand: os.path.join cost ~1 ms per 1,000 files, in a fork's hot loop.
            target, rel = f"{path}/{name}", prefix + name
            item = present.get(name)
            st = item.stat(follow_symlinks=False) if item is not None else None
            kind = entry[0]
            if kind == "d":
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    os.unlink(target)
                    self.removed_files.add(rel)
                    st = None
                if st is None:
                    self.new_dirs.append((target, rel + "/"))
                    changed = True
                self._sync(target, rel + "/", entry[1], new=st is None)
                continue
            if kind == "l":
                if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(target) == entry[1]:
                    continue
                changed = True
                if st is not None:
                    self._clear(target, rel, st)
                if new:
                    os.makedirs(path, exist_ok=True)
                os.symlink(entry[1], target)
                continue
            self.reached.update(entry[3])
            if st is not None and stat.S_ISREG(st.st_mode) and self._same(target, rel, st, entry):
                if st.st_nlink > 1:
                    self.linked.add(rel)
                if stat.S_IMODE(st.st_mode) != entry[1]:
                    os.chmod(target, entry[1])
                    self.touched.append((target, rel, entry[3]))
                elif self.index.lookup(rel, st) is not None:  # else it was hashed: touched
                    # The tree's own list of chunks (equal to the index's): the next snapshot
                    # keeps this directory's entries by identity (snapshot.Snapshot._tree).
                    self.fresh[rel] = (self.index.entries[rel][0], entry[3])
            else:
                if st is not None:
                    self._clear(target, rel, st)
                writes.append((target, rel, entry))
        if key is not None and not changed and not writes:
            self.dir_keys[prefix] = key
        self._dispatch(writes)

    def _dispatch(self, writes: list[Write]) -> None:
        """One directory's files to write: copied from a source that has them, else
        written from the store."""
        local = []
        for w in writes:
            found = [s for root, index in self.sources if (s := _source(root, index, w[1],
                                                                         w[2][3]))]
            if found:
                local.append((w, found))
            else:
                self.remote.append(w)
        if local:
            self.local.append(local)

    def _same(self, path: str, rel: str, st: os.stat_result, entry: list[Any]) -> bool:
        chunks = self.index.lookup(rel, st)
        if chunks is not None:
            return chunks == entry[3]
        if st.st_size != entry[2]:
            return False
        with open(path, "rb") as f:  # unknown to the index: hashing beats rewriting
            for c in entry[3]:
                data = f.read(tree.CHUNK_SIZE)
                if not data or not codec.chunk_matches(c, data):
                    return False
            if f.read(1):
                return False
        self.touched.append((path, rel, entry[3]))
        return True

    def _clear(self, path: str, rel: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            self.removed_dirs.append(rel + "/")
        else:
            os.unlink(path)
            self.removed_files.add(rel)

    def _remove(self, path: str, rel: str, is_dir: bool) -> bool:
        """Remove what the tree lacks, keeping ignored paths inside a removed directory
        (which then stays: False)."""
        self.removed += 1
        if not is_dir:
            os.unlink(path)
            self.removed_files.add(rel)
            return True
        with os.scandir(path) as it:
            for item in list(it):
                child_dir = item.is_dir(follow_symlinks=False)
                if not self.rules.ignored(rel + "/" + item.name, item.name, child_dir):
                    self._remove(item.path, rel + "/" + item.name, child_dir)
        if os.listdir(path):
            return False
        os.rmdir(path)
        return True


def _source(root: str, index: StatIndex, rel: str, chunks: list[str]) -> Source | None:
    """How the source directory ``root`` can supply ``rel`` holding ``chunks``: its index
    vouches by stat that its file holds them, or it last read them there too recently to
    vouch for it by stat (a copy is then checked against the recorded fingerprints)."""
    known = index.entries.get(rel)
    if known is not None and known[1] == chunks:
        return f"{root}/{rel}", known[0], None
    pairs = index.quick.get(rel)
    if pairs is not None and [h for _, h in pairs] == chunks:
        return f"{root}/{rel}", None, [f for f, _ in pairs]
    return None
