"""Reading and writing blobs outside the boundary transaction (workspace chunks and trees).

Workspace contents can be far larger than a boundary should carry, so they are uploaded in
batches of their own before the checkpoint that references them commits. An orphan left by a
run that dies in between is harmless: garbage collection removes it after its grace period.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from wtb_ray.storage import codec
from wtb_ray.storage.schema import BLOB_REFRESH_SECONDS, blobs

_EXISTING = select(blobs.c.hash).where(blobs.c.hash.in_(bindparam("hashes", expanding=True)))
_FETCH = select(blobs.c.hash, blobs.c.codec, blobs.c.data).where(
    blobs.c.hash.in_(bindparam("hashes", expanding=True)))
BATCH = 500  # hashes per statement: well under every driver's parameter limit


def _batches(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), BATCH):
        yield items[i:i + BATCH]


def existing(conn: Connection, hashes: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for batch in _batches(sorted(set(hashes))):
        found.update(r[0] for r in conn.execute(_EXISTING, {"hashes": batch}))
    return found


def refresh(conn: Connection, hashes: Iterable[str], now: float) -> None:
    """Mark blobs a writer is about to reference as fresh, if they are old enough for
    garbage collection to consider them (see schema.blobs)."""
    for batch in _batches(sorted(set(hashes))):
        conn.execute(update(blobs).where(
            blobs.c.hash.in_(batch), blobs.c.created_at < now - BLOB_REFRESH_SECONDS)
            .values(created_at=now))


def put(conn: Connection, rows: list[tuple[str, str, int, bytes]], now: float) -> None:
    """Insert (hash, codec, size, payload) rows; an existing row is refreshed if stale."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for i in range(0, len(rows), 100):
        stmt = dialect.insert(blobs)
        stmt = stmt.on_conflict_do_update(
            index_elements=["hash"], set_={"created_at": stmt.excluded.created_at},
            where=blobs.c.created_at < stmt.excluded.created_at - BLOB_REFRESH_SECONDS)
        conn.execute(stmt, [{"hash": h, "codec": c, "size": n, "data": d, "created_at": now}
                            for h, c, n, d in rows[i:i + 100]])


def repack(conn: Connection, rows: list[tuple[str, bytes, str]]) -> None:
    """Rewrite chunks committed raw (codec 'r') compressed: rows of (codec, payload, hash)."""
    conn.execute(update(blobs).where(blobs.c.hash == bindparam("h"),
                                     blobs.c.codec == codec.RAW_LATER)
                 .values(codec=bindparam("c"), data=bindparam("d")),
                 [{"c": c, "d": d, "h": h} for c, d, h in rows])


def fetch(conn: Connection, hashes: Iterable[str]) -> dict[str, bytes]:
    """Raw (decompressed) contents by hash; absent hashes are absent from the result."""
    return {h: codec.unpack(c, data) for h, (c, data) in fetch_packed(conn, hashes).items()}


def fetch_packed(conn: Connection, hashes: Iterable[str]) -> dict[str, tuple[str, bytes]]:
    """(codec, stored bytes) by hash, left for the caller to unpack (in parallel, say)."""
    out: dict[str, tuple[str, bytes]] = {}
    for batch in _batches(sorted(set(hashes))):
        for h, c, data in conn.execute(_FETCH, {"hashes": batch}):
            out[h] = (c, data)
    return out
