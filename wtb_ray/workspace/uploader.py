"""Buffering the chunks and trees a snapshot found new, and writing those the store lacks.

New blobs are buffered up to UPLOAD_BYTES and written in a transaction of their own; at a
checkpoint, a small remainder rides in the checkpoint's own transaction instead.
"""

from __future__ import annotations

import time
from typing import Any

from wtb_ray.storage import blob_io, codec

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

    def has(self, h: str) -> bool:
        """Known stored, or already buffered to be."""
        return h in self.known or h in self.pending

    def add(self, h: str, data: bytes) -> None:
        if self.has(h):
            return
        self.pending[h] = data
        self.size += len(data)
        if self.size >= UPLOAD_BYTES:
            self.flush()

    def take_inline(self) -> list[tuple[str, str, int, bytes]]:
        """What is pending, for the boundary transaction, if small enough; else it is
        uploaded now and nothing is returned. Inline chunks go raw: the store compresses them
        once the boundary has committed (storage/packer.py). The blobs count as known from
        here on: if the boundary commit fails the run stops, and this object with it."""
        if self.size > INLINE_BYTES or len(self.pending) > INLINE_COUNT:
            self.flush()
            return []
        rows = [(h, c, len(data), payload) for h, data in self.pending.items()
                for c, payload in [codec.pack_chunk_later(data)]]
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


class DryRun(Uploader):
    """Stores nothing and keeps no bytes: for telling what a directory holds (its tree and
    chunk hashes) without recording it. ``known`` is only read."""

    def __init__(self, known: set[str]) -> None:
        super().__init__(None, known)

    def add(self, h: str, data: bytes) -> None:
        self.pending[h] = b""

    def flush(self) -> None:
        self.pending.clear()
