"""Workspace trees: one content-addressed object per directory, as in git.

A tree object is the canonical JSON of ``{name: entry}``:

* ``["f", mode, size, [chunk hashes]]`` a regular file, its bytes cut into CHUNK_SIZE chunks;
* ``["l", target]`` a symbolic link (never followed);
* ``["d", tree hash]`` a directory.

A change to one file rewrites the trees on its path only, and two trees with the same hash
hold the same files, so a diff or a restore skips equal subtrees without reading them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

import orjson
from cachetools import LRUCache

from wtb_ray.domain.errors import StorageError
from wtb_ray.storage import blob_io, codec

CHUNK_SIZE = 1 << 17
EMPTY_TREE = codec.digest(codec.encode({}))
# Decoded trees kept per store, by the size of their encoding: some 50 workspaces of 200 MB
# in ~1,600 files each.
CACHE_BYTES = 8 << 20

Entries = dict[str, list[Any]]


def encode(entries: Entries) -> tuple[str, bytes]:
    """(hash, bytes) of a tree object. orjson writes the same canonical JSON as
    ``codec.encode`` for trees (string keys sorted by code point, UTF-8, no spaces; a test
    holds the two equal) some ten times faster: a checkpoint encodes every changed directory."""
    data = orjson.dumps(entries, option=orjson.OPT_SORT_KEYS)
    return codec.digest(data), data


def decode(data: bytes) -> Entries:
    return orjson.loads(data)


def content_id(entry: list[Any]) -> str:
    """One hash for a file's content, whatever its number of chunks."""
    chunks = entry[3]
    if len(chunks) == 1:
        return chunks[0]
    return codec.digest(",".join(chunks).encode())


class TreeCache:
    """Decoded trees by hash, shared by everything in the process that reads one store's
    trees: a rollback, resume or fork then reads from the database only the directories no
    snapshot or restore here has seen. A tree's hash names its content, so an entry never
    goes stale. The entries are shared: never modify them. Least recently used go first."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._trees: LRUCache[str, tuple[Entries, int]] = LRUCache(
            max_bytes, getsizeof=lambda item: item[1])
        self._lock = threading.Lock()  # an LRU's every read reorders it
        self.put(EMPTY_TREE, {}, 2)

    def get(self, tree: str) -> Entries | None:
        with self._lock:
            item = self._trees.get(tree)
        return None if item is None else item[0]

    def __contains__(self, tree: str) -> bool:
        return tree in self._trees

    def put(self, tree: str, entries: Entries, size: int) -> None:
        """``size``: the length of the tree's encoding."""
        if size <= self._trees.maxsize:
            with self._lock:
                self._trees[tree] = (entries, size)


_caches: weakref.WeakKeyDictionary[Any, TreeCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(store: Any) -> TreeCache:
    with _caches_lock:
        cache = _caches.get(store)
        if cache is None:
            cache = _caches[store] = TreeCache()
        return cache


class TreeReader:
    """Loads tree objects from the store, a breadth of a tree at a time, through the
    store's tree cache."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.cache = cache_for(store)
        self._wanted: set[str] = set()

    def get(self, tree: str) -> Entries:
        entries = self.cache.get(tree)
        if entries is None:
            self._wanted = {h for h in self._wanted if h not in self.cache}
            found = self.store.run(blob_io.fetch, self._wanted | {tree})
            if tree not in found:
                raise StorageError(f"workspace tree {tree} is missing from the store")
            for h, data in found.items():
                decoded = decode(data)
                self.cache.put(h, decoded, len(data))
                if h == tree:
                    entries = decoded
            self._wanted -= found.keys()
        # Subtrees are fetched with the next miss: one query per level, not per directory.
        self._wanted.update(e[1] for e in entries.values()
                            if e[0] == "d" and e[1] not in self.cache)
        return entries

    def walk(self, tree: str, prefix: str = "") -> Iterator[tuple[str, list[Any]]]:
        """Every entry under ``tree`` as (path, entry), parents before their contents."""
        for name, entry in sorted(self.get(tree).items()):
            path = prefix + name
            yield path, entry
            if entry[0] == "d":
                yield from self.walk(entry[1], path + "/")

    def blobs(self, tree: str) -> set[str]:
        """Every tree and chunk hash ``tree`` reaches."""
        seen = {tree}
        for _, entry in self.walk(tree):
            if entry[0] == "d":
                seen.add(entry[1])
            elif entry[0] == "f":
                seen.update(entry[3])
        return seen

    def diff(self, a: str | None, b: str | None, prefix: str = ""
             ) -> Iterator[tuple[str, list[Any] | None, list[Any] | None]]:
        """(path, entry in a, entry in b) for every non-directory path that differs, and
        for an empty directory that is on one side only (recorded like a file: without it
        a directory made or removed with nothing in it would not show)."""
        a, b = a or EMPTY_TREE, b or EMPTY_TREE
        if a == b:
            return
        left, right = self.get(a), self.get(b)
        for name in sorted(left.keys() | right.keys()):
            x, y = left.get(name), right.get(name)
            if x == y:
                continue
            path = prefix + name
            x_dir = x is not None and x[0] == "d"
            y_dir = y is not None and y[0] == "d"
            if x_dir or y_dir:
                yield from self.diff(x[1] if x_dir else None, y[1] if y_dir else None,
                                     path + "/")
                if x_dir and not y_dir and x[1] == EMPTY_TREE:
                    yield path, x, None
                if y_dir and not x_dir and y[1] == EMPTY_TREE:
                    yield path, None, y
            if (x is not None and not x_dir) or (y is not None and not y_dir):
                yield path, None if x_dir else x, None if y_dir else y


class TreeOverlay(TreeReader):
    """A TreeReader that looks first in trees held here, not stored (a dry scan's)."""

    def __init__(self, store: Any, local: dict[str, Entries]) -> None:
        super().__init__(store)
        self.local = local

    def get(self, tree: str) -> Entries:
        found = self.local.get(tree)
        return found if found is not None else super().get(tree)
