"""Safe, deterministic state serialization and content addressing.

Values are canonical JSON (sorted keys, no whitespace), never pickle: a checkpoint written by
one process, or sent in a request, can be read by another without running its code. The same
value always yields the same bytes, hence the same hash, so an unchanged value is stored once.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zlib
from typing import Any

import blake3

_ALLOWED = "dict, list, tuple, str, int, float, bool or None"
_COMPRESS_FROM = 256  # bytes; smaller values rarely shrink enough to pay for the CPU


class EncodeError(ValueError):
    """A value is not JSON-family data; the message says what is wrong."""


def _reject(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a storable type (use {_ALLOWED})")


_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            default=_reject)


def encode(value: Any) -> bytes:
    """Canonical bytes of ``value``; raises EncodeError naming the problem."""
    try:
        return _encoder.encode(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        reason = str(exc)
        if "not supported between instances" in reason:
            reason = "a dict mixes key types (use string keys)"
        raise EncodeError(reason) from None


def decode(data: bytes) -> Any:
    return json.loads(data)


# A manifest maps each state key to an entry: the hash of a stored blob, or, for a value no
# longer than a hash, "=" followed by the value's canonical JSON (storing such a value as a
# blob would cost more than the value). Hashes are hex, so they never start with "=".
INLINE_MAX = 32


def manifest_entry(data: bytes) -> str:
    return "=" + data.decode() if len(data) <= INLINE_MAX else digest(data)


def is_inline(entry: str) -> bool:
    return entry.startswith("=")


def inline_value(entry: str) -> Any:
    return json.loads(entry[1:])


def digest(data: bytes) -> str:
    """Content address: 128-bit BLAKE2b, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def chunk_digest(data: bytes | memoryview) -> str:
    """Content address of a workspace file chunk: 128-bit BLAKE3, hex. Chunks are most of
    the bytes a checkpoint hashes, and BLAKE3 hashes them several times faster than BLAKE2b
    (SIMD across its internal blocks). Stores written before it name chunks by ``digest``:
    use ``chunk_matches`` to compare bytes with a stored chunk's address."""
    return blake3.blake3(data).hexdigest(16)


def chunk_matches(address: str, data: bytes | memoryview) -> bool:
    """Whether ``data`` is the chunk named ``address`` (by either algorithm)."""
    return chunk_digest(data) == address or digest(data) == address


def pack(data: bytes) -> tuple[str, bytes]:
    """Compress when it pays; returns (codec, payload) with codec 'z' (zlib) or 'j' (raw).
    (Workspace chunks use ``pack_chunk``: codec 's', zstd.)"""
    if len(data) >= _COMPRESS_FROM:
        packed = zlib.compress(data, 6)
        if len(packed) < len(data) * 0.9:
            return "z", packed
    return "j", data


_local = threading.local()


def _zstd() -> tuple[Any, Any]:
    """This thread's (compressor, decompressor): zstandard's objects are not thread-safe."""
    pair = getattr(_local, "zstd", None)
    if pair is None:
        import zstandard

        pair = _local.zstd = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
    return pair


def pack_chunk(data: bytes) -> tuple[str, bytes]:
    """Like ``pack`` for workspace file chunks, tuned for throughput: zstd at level 1
    compresses text ~3x faster than zlib and decompresses ~4x faster, and skips through
    incompressible bytes (model weights, archives) at GB/s. Codec 's'."""
    if len(data) < _COMPRESS_FROM:
        return "j", data
    packed = _zstd()[0].compress(data)
    return ("s", packed) if len(packed) < len(data) * 0.9 else ("j", data)


# Codec 'r': raw bytes a checkpoint wrote uncompressed, for the store's packer to compress
# once they are committed (storage/packer.py); one it leaves (it did not shrink, or its
# process stopped first) reads back the same, only larger.
RAW_LATER = "r"


def pack_chunk_later(data: bytes) -> tuple[str, bytes]:
    """A chunk for a checkpoint's own transaction: raw now, compressed after the commit."""
    return (RAW_LATER, data) if len(data) >= _COMPRESS_FROM else ("j", data)


def unpack(codec: str, payload: bytes) -> bytes:
    if codec == "z":
        return zlib.decompress(payload)
    if codec in ("j", RAW_LATER):
        return bytes(payload)
    if codec == "s":
        return _zstd()[1].decompress(payload)
    raise ValueError(f"unknown blob codec {codec!r}")
