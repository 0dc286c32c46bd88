"""Reading a file into content-addressed chunks: CHUNK_SIZE pieces read into one reused
buffer (a file is never held whole), each hashed for its quick fingerprint; a chunk whose
fingerprint the index has seen at that place keeps that chunk's hash without hashing it
again, and a chunk the store lacks goes to the uploader."""

from __future__ import annotations

import os
from typing import Any

import xxhash

from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.storage import codec
from wtb_ray.workspace import tree
from wtb_ray.workspace.index import StatIndex
from wtb_ray.workspace.uploader import Uploader


class Chunker:
    def __init__(self, index: StatIndex, uploader: Uploader, max_file_bytes: int) -> None:
        self.index = index
        self.uploader = uploader
        self.max_file_bytes = max_file_bytes
        self._buf = memoryview(bytearray(tree.CHUNK_SIZE))  # reused: no allocation per read

    def read(self, rel: str, path: str, st: os.stat_result
             ) -> tuple[list[str], list[list[str]]]:
        """The file's chunk hashes and its [fingerprint, hash] pairs; a file over the size
        limit (before or while it is read) fails naming it."""
        limit = self.max_file_bytes
        if st.st_size > limit:
            raise WorkspaceError(rel, f"{st.st_size} bytes is over the size limit of {limit} "
                                      "bytes (WTB_WORKSPACE_MAX_FILE_BYTES)")
        chunks: list[str] = []
        pairs: list[list[str]] = []
        read = 0
        buf = self._buf
        with open(path, "rb", buffering=0) as f:
            while n := _fill(f, buf):
                read += n
                if read > limit:
                    raise WorkspaceError(rel, f"grew over the size limit of {limit} bytes "
                                              "while being read")
                view = buf[:n]
                fingerprint = xxhash.xxh3_128_hexdigest(view)
                h = self.index.known_hash(rel, len(chunks), fingerprint)
                if h is None or not self.uploader.has(h):
                    data = bytes(view)  # only a chunk that may have to be stored is copied
                    h = h or codec.chunk_digest(data)
                    self.uploader.add(h, data)
                chunks.append(h)
                pairs.append([fingerprint, h])
        return chunks, pairs


def _fill(f: Any, buf: memoryview) -> int:
    """Read into ``buf`` until it is full or the file ends; the count read."""
    n = 0
    while n < len(buf) and (got := f.readinto(buf[n:])):
        n += got
    return n
