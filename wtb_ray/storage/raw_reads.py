"""What every fork and resume starts with (an execution, one of its checkpoints and the
state there), read on the store's own driver connection instead of through SQLAlchemy's
execution layer.

The same four queries took ~1 ms there in a fork of a 10 MB workspace (its code cold after
the fork's file copies), about 8% of the fork; a few tenths of that here. The results are
those of ``queries.checkpoint_with_state``, whose row decoding and checks this shares; the
SQL is the same for both backends but for the placeholders and the list of blob hashes.
"""

from __future__ import annotations

from typing import Any

from wtb_ray.domain.errors import NotFound
from wtb_ray.storage import queries, rows


class _Row:
    """A driver row as ``rows.*_from_row`` read SQLAlchemy's (by column name)."""

    __slots__ = ("_mapping",)

    def __init__(self, description: Any, values: Any) -> None:
        self._mapping = {column[0]: value for column, value in zip(description, values,
                                                                   strict=True)}


class RawReads:
    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        p = "?" if self.sqlite else "%s"
        self.execution_sql = f"SELECT * FROM executions WHERE id = {p}"
        self.checkpoint_sql = f"SELECT * FROM checkpoints WHERE id = {p}"
        self.chain_sql = queries.CHAIN_SQL.format(id=p)

    def checkpoint_with_state(self, dbapi: Any, execution_id: str, checkpoint_id: int | None
                              ) -> tuple[Any, Any, queries.State | None]:
        """As ``queries.checkpoint_with_state``, on a DB-API connection: SQLite's in one
        read transaction; PostgreSQL's in autocommit (the execution row is the only one
        read that can change, and it is read first)."""
        cur = dbapi.cursor()
        try:
            if self.sqlite:
                cur.execute("BEGIN")
            try:
                return self._read(cur, execution_id, checkpoint_id)
            finally:
                if self.sqlite:
                    cur.execute("COMMIT")
        finally:
            cur.close()

    def _read(self, cur: Any, execution_id: str, checkpoint_id: int | None
              ) -> tuple[Any, Any, queries.State | None]:
        ex = rows.execution_from_row(self._one(cur, self.execution_sql, execution_id,
                                               "execution"))
        cid = ex.head_checkpoint_id if checkpoint_id is None else checkpoint_id
        if cid is None:
            return ex, None, None
        ckpt = rows.checkpoint_from_row(self._one(cur, self.checkpoint_sql, cid, "checkpoint"))
        if ckpt.execution_id != ex.id:
            return ex, ckpt, None
        entries, since_full = queries.merge_chain(cid, cur.execute(self.chain_sql,
                                                                   (cid,)).fetchall())
        hashes = queries.stored_hashes(entries)
        return ex, ckpt, queries.state_from(entries, since_full,
                                            self._values(cur, hashes) if hashes else {})

    @staticmethod
    def _one(cur: Any, sql: str, key: Any, what: str) -> _Row:
        found = cur.execute(sql, (key,)).fetchone()
        if found is None:
            raise NotFound(what, key)
        return _Row(cur.description, found)

    def _values(self, cur: Any, hashes: list[str]) -> dict[str, Any]:
        wanted = sorted(set(hashes))
        if self.sqlite:
            sql = ("SELECT hash, codec, data FROM blobs WHERE hash IN "
                   f"({', '.join('?' * len(wanted))})")
            found = cur.execute(sql, wanted).fetchall()
        else:
            found = cur.execute("SELECT hash, codec, data FROM blobs WHERE hash = ANY(%s)",
                                (wanted,)).fetchall()
        return queries.decode_values(hashes, found)
