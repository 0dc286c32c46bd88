"""The stat index: what each file's chunks were the last time it was read, as in git.

A file whose size, mtime, ctime, inode and mode still match its entry is not read again. An
entry is only kept if the file's mtime and ctime are older than a clock taken from the file
system itself (the mtime of a file WTB touches): a later write then always changes the mtime,
even on file systems with coarse timestamps, so a "racily clean" file is read once more instead
of being trusted. The index is a cache: losing it costs one read of every file.

It also remembers, per file, each chunk's quick fingerprint (xxh3-128) beside its content
hash (blake2b), whatever the file's age: a file that must be read again (it changed, or was
too recent to trust) has only the chunks whose fingerprint changed hashed again. Patching
a few bytes of a large file then costs a read of it, not a hash of all of it (xxh3 runs
some ten times faster than blake2b here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson
from cachetools import LRUCache

from wtb_ray.workspace.ignore import RESERVED

log = logging.getLogger(__name__)

Key = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, inode, mode


def stat_key(st: os.stat_result) -> Key:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


DirKey = tuple[int, int, int]  # inode, mtime_ns, ctime_ns


def dir_key(st: os.stat_result, clock: int) -> DirKey | None:
    """What a directory listed right after ``st`` was taken is known by, if its times are
    older than ``clock`` (as for a file's entry: a change within the same tick of a coarse
    clock leaves them equal). Creating, removing or renaming an entry changes a directory's
    mtime and ctime, and no program can set a ctime: while the key is the same, so are the
    names."""
    if st.st_mtime_ns >= clock or st.st_ctime_ns >= clock:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


class StatIndex:
    def __init__(self, root: Path) -> None:
        self.dir = root / RESERVED
        self.entries: dict[str, tuple[Key, list[str]]] = {}
        self.quick: dict[str, list[list[str]]] = {}  # path -> [[fingerprint, hash] per chunk]
        self._saved: dict[str, tuple[Key, list[str]]] = {}
        self._saved_quick: dict[str, list[list[str]]] = {}

    @classmethod
    def load(cls, root: Path) -> StatIndex:
        index = cls(root)
        path = index.dir / "index"
        try:
            st = os.stat(path)
            seen = _parsed.get(str(path), (st.st_ino, st.st_size, st.st_mtime_ns,
                                           st.st_ctime_ns))
            if seen is not None:
                index.entries, index.quick = seen
            else:
                index.entries, index.quick = _parse(path.read_bytes())
                _parsed.put(str(path), st, index.entries, index.quick)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            index.entries, index.quick = {}, {}  # absent or unreadable: every file is read
        index._saved, index._saved_quick = dict(index.entries), dict(index.quick)
        return index

    def clock(self) -> int:
        """The file system's current time, in the units of st_mtime_ns: the mtime of WTB's
        directory, touched now (or made: a fork's restore makes it, and a new file costs
        more than a directory)."""
        try:
            os.utime(self.dir)
        except FileNotFoundError:
            self.dir.mkdir(parents=True, exist_ok=True)
        return os.lstat(self.dir).st_mtime_ns

    def lookup(self, rel: str, st: os.stat_result) -> list[str] | None:
        entry = self.entries.get(rel)
        return entry[1] if entry is not None and entry[0] == stat_key(st) else None

    @staticmethod
    def entry(st: os.stat_result, chunks: list[str], clock: int) -> tuple[Key, list[str]] | None:
        """An entry worth keeping, or None if the file is too recent to be trusted."""
        if st.st_mtime_ns >= clock or st.st_ctime_ns >= clock:
            return None
        return stat_key(st), chunks

    def known_hash(self, rel: str, i: int, fingerprint: str) -> str | None:
        """The content hash of chunk ``i`` of ``rel`` if its fingerprint is the one seen."""
        pairs = self.quick.get(rel)
        if pairs is not None and i < len(pairs) and pairs[i][0] == fingerprint:
            return pairs[i][1]
        return None

    def replace(self, entries: dict[str, tuple[Key, list[str]]],
                quick: dict[str, list[list[str]]] | None = None) -> None:
        self.entries = entries
        if quick is not None:
            self.quick = quick

    def save(self) -> None:
        if self.entries == self._saved and self.quick == self._saved_quick:
            return
        tmp = self.dir / f"index.{os.getpid()}.tmp"
        # orjson writes each (key, chunks) tuple as the JSON array [key, chunks] load reads.
        data: dict[str, Any] = {"v": 1, "entries": self.entries, "quick": self.quick}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(data))
            os.replace(tmp, self.dir / "index")
            _parsed.put(str(self.dir / "index"), os.stat(self.dir / "index"), self.entries,
                        self.quick)
        except OSError as exc:  # a cache: a checkpoint or restore does not fail for it
            log.warning("could not save the workspace's stat index in %s (%s): another "
                        "process will read its files again instead", self.dir, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        self._saved, self._saved_quick = dict(self.entries), dict(self.quick)


def _parse(data: bytes) -> tuple[dict[str, tuple[Key, list[str]]], dict[str, list[list[str]]]]:
    raw = orjson.loads(data)
    entries = {rel: (tuple(e[0]), e[1]) for rel, e in raw["entries"].items()}
    quick = raw.get("quick", {})  # [[fingerprint, hash], ...] per path
    if not isinstance(quick, dict) or not all(
            isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)
            for pairs in quick.values()):
        raise TypeError("malformed fingerprints")
    return entries, quick


class _Parsed:
    """The indexes this process last wrote or parsed, by file: loading one whose file is
    the same (inode, size, mtime, ctime) again shares their entries instead of parsing it
    (a fork reads its origin's index, which the origin's run wrote just before; at 200 MB
    that is ~400 KB of JSON). Entries are never modified in place, only replaced, so sharing
    them is safe; and a stale hit would be harmless: each entry stands only for a file whose
    stat still matches it."""

    def __init__(self, size: int) -> None:
        self._files: LRUCache[str, tuple[tuple[int, int, int, int], Any, Any]] = LRUCache(size)
        self._lock = threading.Lock()

    def get(self, path: str, key: tuple[int, int, int, int]) -> tuple[Any, Any] | None:
        with self._lock:
            hit = self._files.get(path)
        return (hit[1], hit[2]) if hit is not None and hit[0] == key else None

    def put(self, path: str, st: os.stat_result, entries: Any, quick: Any) -> None:
        with self._lock:
            self._files[path] = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                                 entries, quick)


_parsed = _Parsed(4)
