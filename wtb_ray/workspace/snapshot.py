"""Recording a workspace directory as a tree, uploading only what the store lacks.

Files are read in CHUNK_SIZE pieces and never held whole; new chunks are buffered up to
UPLOAD_BYTES and written in a transaction of their own. Files the stat index vouches for are
not read at all.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

import xxhash

from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.storage import blob_io, codec
from wtb_ray.workspace import tree
from wtb_ray.workspace.ignore import IgnoreRules
from wtb_ray.workspace.index import StatIndex

UPLOAD_BYTES = 16 << 20
# New blobs up to this size (and count) ride in the checkpoint's own transaction instead of
# one of their own: a small change then costs one commit (one round trip on PostgreSQL).
INLINE_BYTES, INLINE_COUNT = 4 << 20, 256


class Uploader:
    """Buffers blobs the store may lack; ``known`` holds those it is known to have."""

    def __init__(self, store: Any, known: set[str]) -> None:
        self.store = store
        self.known = known
        self.pending: dict[str, bytes] = {}
        self.size = 0

    def add(self, h: str, data: bytes) -> None:
        if h in self.known or h in self.pending:
            return
        self.pending[h] = data
        self.size += len(data)
        if self.size >= UPLOAD_BYTES:
            self.flush()

    def take_inline(self) -> list[tuple[str, str, int, bytes]]:
        """What is pending, packed for the boundary transaction, if small enough; else it is
        uploaded now and nothing is returned. The blobs count as known from here on: if the
        boundary commit fails the run stops, and this object with it."""
        if self.size > INLINE_BYTES or len(self.pending) > INLINE_COUNT:
            self.flush()
            return []
        rows = [self._row(h) for h in self.pending]
        self.known.update(self.pending)
        self.pending.clear()
        self.size = 0
        return rows

    def _row(self, h: str) -> tuple[str, str, int, bytes]:
        data = self.pending[h]
        packed_codec, payload = codec.pack_chunk(data)
        return h, packed_codec, len(data), payload

    def flush(self) -> None:
        if not self.pending:
            return
        present = self.store.run(blob_io.existing, self.pending)
        rows = [self._row(h) for h in self.pending if h not in present]
        now = time.time()

        def write(conn: Any) -> None:
            blob_io.refresh(conn, present, now)
            # One collected since we looked (it was old and unreachable) is written again.
            gone = present - blob_io.existing(conn, present)
            blob_io.put(conn, rows + [self._row(h) for h in gone], now)

        self.store.run(write, write=True)
        self.known.update(self.pending)
        self.pending.clear()
        self.size = 0


class Snapshot:
    """One pass over the directory; ``run()`` returns the root tree hash."""

    def __init__(self, root: str, rules: IgnoreRules, index: StatIndex, uploader: Uploader,
                 max_file_bytes: int) -> None:
        self.root = root
        self.rules = rules
        self.index = index
        self.uploader = uploader
        self.max_file_bytes = max_file_bytes
        self.fresh: dict[str, Any] = {}
        self.quick: dict[str, list[list[str]]] = {}  # fingerprints of every file seen
        self.files_read = 0

    def run(self, inline: bool = False) -> tuple[str, list[tuple[str, str, int, bytes]]]:
        """(root tree, blobs the caller must write with the checkpoint). Without ``inline``
        every blob is stored before this returns."""
        self.clock = self.index.clock()
        root = self._tree(self.root, "")
        rows = self.uploader.take_inline() if inline else []
        self.uploader.flush()
        self.index.replace(self.fresh, self.quick)
        return root, rows

    def _tree(self, path: str, prefix: str) -> str:
        entries: tree.Entries = {}
        with os.scandir(path) as it:
            items = list(it)
        for item in items:
            name, rel = item.name, prefix + item.name
            try:
                name.encode()
            except UnicodeEncodeError:
                raise WorkspaceError(rel.encode(errors="replace").decode(),
                                     "file name is not valid UTF-8") from None
            st = item.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if not self.rules.ignored(rel, name, True):
                    entries[name] = ["d", self._tree(item.path, rel + "/")]
            elif self.rules.ignored(rel, name, False):
                continue
            elif stat.S_ISREG(mode):
                entries[name] = ["f", stat.S_IMODE(mode), st.st_size,
                                 self._chunks(rel, item.path, st)]
            elif stat.S_ISLNK(mode):
                entries[name] = ["l", os.readlink(item.path)]
            else:
                raise WorkspaceError(rel, "not a regular file, directory or symbolic link "
                                          "(add it to the workspace ignore patterns)")
        h, data = tree.encode(entries)
        self.uploader.add(h, data)
        return h

    def _chunks(self, rel: str, path: str, st: os.stat_result) -> list[str]:
        known = self.index.lookup(rel, st)
        if known is not None and all(c in self.uploader.known for c in known):
            self.fresh[rel] = self.index.entries[rel]
            if rel in self.index.quick:
                self.quick[rel] = self.index.quick[rel]
            return known
        limit = self.max_file_bytes
        if st.st_size > limit:
            raise WorkspaceError(rel, f"{st.st_size} bytes is over the size limit of {limit} "
                                      "bytes (WTB_WORKSPACE_MAX_FILE_BYTES)")
        chunks: list[str] = []
        pairs: list[list[str]] = []
        read = 0
        with open(path, "rb") as f:
            while buf := f.read(tree.CHUNK_SIZE):
                read += len(buf)
                if read > limit:
                    raise WorkspaceError(rel, f"grew over the size limit of {limit} bytes "
                                              "while being read")
                fingerprint = xxhash.xxh3_128_hexdigest(buf)
                h = self.index.known_hash(rel, len(chunks), fingerprint) or codec.digest(buf)
                chunks.append(h)
                pairs.append([fingerprint, h])
                self.uploader.add(h, buf)
        self.quick[rel] = pairs
        self.files_read += 1
        entry = StatIndex.entry(st, chunks, self.clock)
        if entry is not None:
            self.fresh[rel] = entry
        return chunks
