"""Recording a workspace directory as a tree, uploading only what the store lacks.

Files are read in chunks (workspace/chunker.py); new chunks go to an Uploader
(workspace/uploader.py). Files the stat index vouches for are not read at all.
"""

from __future__ import annotations

import os
from stat import S_IMODE, S_ISDIR, S_ISLNK, S_ISREG
from typing import Any

from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.workspace import tree
from wtb_ray.workspace.chunker import Chunker
from wtb_ray.workspace.ignore import RESERVED, IgnoreRules
from wtb_ray.workspace.index import DirKey, StatIndex, dir_key
from wtb_ray.workspace.uploader import Uploader
from wtb_ray.workspace.watch import Watch, dirty_dirs

Trees = dict[str, tuple[tree.Entries, str]]  # directory path -> (entries, tree hash)
DirKeys = dict[str, DirKey]  # directory path -> its key when listed (index.dir_key)


class Snapshot:
    """One pass over the directory; ``run()`` returns the root tree hash."""

    def __init__(self, root: str, rules: IgnoreRules, index: StatIndex, uploader: Uploader,
                 max_file_bytes: int, trees: Trees | None = None,
                 cache: tree.TreeCache | None = None, dir_keys: DirKeys | None = None,
                 watch: Watch | None = None, dirty: set[str] | None = None) -> None:
        self.root = root
        self.cache = cache  # the store's decoded trees: each one encoded here goes in
        self.rules = rules
        self.index = index
        self.uploader = uploader
        self.chunker = Chunker(index, uploader, max_file_bytes)
        self.fresh: dict[str, Any] = {}
        self.quick: dict[str, list[list[str]]] = {}  # fingerprints of every file seen
        self.files_read = 0
        self.examined = 0  # paths stat-ed (all of them without a watch)
        # The last snapshot's directories: one whose entries are all the same again keeps its
        # hash without being encoded and hashed again. Replaced, not merged: a removed
        # directory drops out.
        self.last_trees = trees if trees is not None else {}
        self.trees: Trees = {}
        # Directories whose names need not be listed again: one whose key (index.dir_key)
        # is the one it had when the last snapshot or restore listed it still holds the
        # names recorded then. Saves opening and reading each directory: ~30% of a snapshot
        # of an unchanged tree here. Replaced at the end, like the trees.
        self.last_dir_keys = dir_keys if dir_keys is not None else {}
        self.dir_keys: DirKeys = {}
        # With a watch (workspace/watch.py): each directory walked is watched before it is
        # listed, and ``dirty`` (when the watch vouches for the rest) holds the paths that
        # must be examined; a directory with none of them under it is kept as it was.
        self.watch = watch
        self.dirty = dirty
        self.dirty_dirs = dirty_dirs(dirty) if dirty is not None else {}
        self.linked: set[str] = set()  # files with more than one link: always examined
        if dirty is not None:
            # The watch names every path that changed: the index is updated in place (from a
            # copy: a loaded index's entries are shared, see index._Parsed) and a directory
            # the watch has heard from since it was recorded gets only the names it heard of
            # examined (``_patch``), instead of every entry of every such directory copied
            # one by one: that took 1.5-2 ms of a 5-6 ms snapshot after a 1% change of a
            # 200 MB workspace (~1,600 files) here, and ~0.15 of 0.6 ms at 10 MB.
            self.fresh = dict(index.entries)
            self.quick = dict(index.quick)

    def run(self, inline: bool = False) -> tuple[str, list[tuple[str, str, int, bytes]]]:
        """(root tree, blobs the caller must write with the checkpoint). Without ``inline``
        every blob is stored before this returns."""
        self.clock = self.index.clock()
        root = self._tree(self.root, "")
        rows = self.uploader.take_inline() if inline else []
        self.uploader.flush()
        self.index.replace(self.fresh, self.quick)
        self.last_trees.clear()
        self.last_trees.update(self.trees)
        self.last_dir_keys.clear()
        self.last_dir_keys.update(self.dir_keys)
        return root, rows

    def _tree(self, path: str, prefix: str) -> str:
        # The per-file path is the hot loop of a checkpoint (one stat and one index lookup per
        # file, thousands of files): hence the local names and the lookup inlined, the ignore
        # rules asked about files only if there are any, and the last snapshot's entry kept
        # (not rebuilt) for a file that is the same again, so that comparing this directory
        # with the last snapshot's mostly compares an object with itself.
        stored = self.uploader.known
        last = self.last_trees.get(prefix)
        dirty = self.dirty
        if dirty is not None and last is not None and last[1] in stored:
            if prefix not in self.dirty_dirs:
                if self._keep(prefix, last):
                    return last[1]
            elif prefix[:-1] not in dirty:  # watched all along: an event named each change
                return self._patch(path, prefix, last)
        if self.watch is not None:
            self.watch.add(path, prefix)  # before the listing: a later change is an event
        entries: tree.Entries = {}
        index, quick = self.index.entries, self.index.quick
        fresh, fresh_quick = self.fresh, self.quick
        check_files = bool(self.rules.patterns)
        last_entries = last[0] if last is not None else {}
        lstat = os.lstat
        key = dir_key(lstat(path), self.clock)  # before the listing: a later change shows
        if key is not None:
            self.dir_keys[prefix] = key
        items: list[tuple[str, os.DirEntry[str] | None]]
        if last is not None and key is not None and self.last_dir_keys.get(prefix) == key:
            items = [(name, None) for name in last_entries]
        else:
            with os.scandir(path) as it:
                items = [(e.name, e) for e in it]
        for name, item in items:
            rel = prefix + name
            if dirty is not None and rel not in dirty and (was := last_entries.get(name)):
                # The watch vouches for it: the same file, link or directory as last time.
                if was[0] == "d":
                    entries[name] = ["d", self._tree(f"{path}/{name}", rel + "/")]
                    continue
                if was[0] == "l" or stored.issuperset(was[3]):
                    entries[name] = was
                    if (known := index.get(rel)) is not None:
                        fresh[rel] = known
                    if (pairs := quick.get(rel)) is not None:
                        fresh_quick[rel] = pairs
                    continue
            if rel == RESERVED:  # WTB's own directory, always ignored
                continue
            if not name.isascii():
                _check_utf8(rel)
            item_path = f"{path}/{name}"
            st = lstat(item_path) if item is None else item.stat(follow_symlinks=False)
            was = last_entries.get(name)
            # Inlined, the common case of a full walk: a file the index vouches for, recorded
            # the same last time (what ``_examine`` would find, without a call per file).
            if (was is not None and was[0] == "f" and not check_files and st.st_nlink == 1
                    and (known := index.get(rel)) is not None and was[3] is known[1]
                    and known[0] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                     st.st_mode)
                    and was[1] == S_IMODE(st.st_mode) and was[2] == st.st_size
                    and stored.issuperset(known[1])):
                self.examined += 1
                fresh[rel] = known
                if (pairs := quick.get(rel)) is not None:
                    fresh_quick[rel] = pairs
                entries[name] = was
                continue
            entry = self._examine(item_path, name, rel, st, was)
            if entry is not None:
                entries[name] = entry
        if dirty is not None:  # the index was copied whole: drop what is no longer there
            for name, was in last_entries.items():
                now = entries.get(name)
                if now is None or now[0] != was[0]:
                    self._forget(prefix + name, was)
        return self._record(prefix, entries, last)

    def _patch(self, path: str, prefix: str, last: tuple[tree.Entries, str]) -> str:
        """A directory watched since it was recorded as ``last``: its entries are the last
        ones but for the names events were heard of, which are examined again (created,
        changed, removed, or with something changed below them)."""
        entries = dict(last[0])
        touched = self.dirty_dirs[prefix]
        for name, entry in last[0].items():  # subdirectories with nothing heard of below
            if entry[0] == "d" and name not in touched:  # (kept: see the top of ``_tree``)
                entries[name] = ["d", self._tree(f"{path}/{name}", f"{prefix}{name}/")]
        for name in touched:
            rel = prefix + name
            was = entries.pop(name, None)
            if rel == RESERVED:
                continue
            if was is not None and was[0] == "d" and rel not in self.dirty:
                # Only on the way to a changed path: the same directory (as in ``_tree``).
                entries[name] = ["d", self._tree(f"{path}/{name}", rel + "/")]
                continue
            if not name.isascii():
                _check_utf8(rel)
            try:
                st = os.lstat(f"{path}/{name}")
            except FileNotFoundError:  # removed since
                st = None
            entry = None if st is None else self._examine(f"{path}/{name}", name, rel, st, was)
            if entry is not None:
                entries[name] = entry
            if was is not None and (entry is None or entry[0] != was[0]):
                self._forget(rel, was)
        # Its key as listed last stays true: a directory whose names changed since can never
        # show that key again (see index.dir_key), so a later listing looks again then.
        if (key := self.last_dir_keys.get(prefix)) is not None:
            self.dir_keys[prefix] = key
        return self._record(prefix, entries, last)

    def _examine(self, path: str, name: str, rel: str, st: os.stat_result,
                 was: list[Any] | None) -> list[Any] | None:
        """The tree entry of ``rel`` (``was`` last time; ``st`` its lstat), or None if it
        is not recorded (ignored)."""
        self.examined += 1
        mode = st.st_mode
        ignored = self.rules.ignored
        if S_ISREG(mode):
            if self.rules.patterns and ignored(rel, name, False):
                return None
            if st.st_nlink > 1:
                self.linked.add(rel)
            known = self.index.entries.get(rel)
            if (known is not None and known[0] == (st.st_size, st.st_mtime_ns,
                                                   st.st_ctime_ns, st.st_ino, mode)
                    and self.uploader.known.issuperset(chunks := known[1])):
                self.fresh[rel] = known
                pairs = self.index.quick.get(rel)
                if pairs is not None:
                    self.quick[rel] = pairs
                if (was is not None and was[0] == "f" and was[3] is chunks
                        and was[1] == S_IMODE(mode) and was[2] == st.st_size):
                    return was
            else:
                chunks = self._read(rel, path, st)
            return ["f", S_IMODE(mode), st.st_size, chunks]
        if S_ISDIR(mode):
            if ignored(rel, name, True):
                return None
            return ["d", self._tree(path, rel + "/")]
        if ignored(rel, name, False):
            return None
        if S_ISLNK(mode):
            return ["l", os.readlink(path)]
        raise WorkspaceError(rel, "not a regular file, directory or symbolic link "
                                  "(add it to the workspace ignore patterns)")

    def _forget(self, rel: str, was: list[Any]) -> None:
        """Drop the index entries of what ``rel`` was (a file, or a directory and all under
        it) once it is no longer there as such (the index is updated in place). A removed
        directory costs a pass over the index; a removed file, none."""
        if was[0] == "f":
            self.fresh.pop(rel, None)
            self.quick.pop(rel, None)
        elif was[0] == "d":
            under = rel + "/"
            for entries in (self.fresh, self.quick):
                for gone in [p for p in entries if p.startswith(under)]:
                    del entries[gone]

    def _record(self, prefix: str, entries: tree.Entries,
                last: tuple[tree.Entries, str] | None) -> str:
        """The directory's tree hash: the last one if its entries are the same again."""
        if last is not None and last[1] in self.uploader.known and last[0] == entries:
            h = last[1]
        else:
            h, data = tree.encode(entries)
            self.uploader.add(h, data)
            if self.cache is not None:
                self.cache.put(h, entries, len(data))
        self.trees[prefix] = (entries, h)
        return h

    def _keep(self, prefix: str, last: tuple[tree.Entries, str]) -> bool:
        """Take a directory under which the watch saw nothing as the last snapshot recorded
        it, with its subdirectories (their files' index entries are in the copied index);
        False (nothing taken) if the last snapshot's record of it is incomplete."""
        dirs: list[tuple[str, tuple[tree.Entries, str]]] = []
        todo = [(prefix, last)]
        while todo:
            here, record = todo.pop()
            dirs.append((here, record))
            for name, entry in record[0].items():
                if entry[0] == "d":
                    sub = self.last_trees.get(f"{here}{name}/")
                    if sub is None or sub[1] != entry[1]:
                        return False
                    todo.append((f"{here}{name}/", sub))
        for here, record in dirs:
            self.trees[here] = record
            if (key := self.last_dir_keys.get(here)) is not None:
                self.dir_keys[here] = key
        return True

    def _read(self, rel: str, path: str, st: os.stat_result) -> list[str]:
        """Read a file the index does not vouch for; its chunk hashes."""
        chunks, self.quick[rel] = self.chunker.read(rel, path, st)
        self.files_read += 1
        entry = StatIndex.entry(st, chunks, self.clock)
        if entry is not None:
            self.fresh[rel] = entry
        else:  # too recent to vouch for: not the entry the copied index may still hold
            self.fresh.pop(rel, None)
        return chunks


def _check_utf8(rel: str) -> None:
    try:
        rel.encode()
    except UnicodeEncodeError:
        raise WorkspaceError(rel.encode(errors="replace").decode(),
                             "file name is not valid UTF-8") from None
