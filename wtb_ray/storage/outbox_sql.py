"""The outbox relay's SQL: claim events in order per aggregate, settle them, dead letters.

A relay claims in a short transaction. It locks the *head* of each aggregate it can take (the
aggregate's oldest pending row, if that row is available now) with ``FOR UPDATE SKIP LOCKED``
on PostgreSQL, so two relays never take one aggregate at once, then takes the aggregate's
pending rows from its head on and marks them claimed: ``claimed_by`` names the relay and
``available_at`` becomes the end of the claim. Delivery happens outside any transaction;
another short transaction then settles each row: delivered, retried later, or dead.

An aggregate whose head is not available (claimed by a relay, or waiting out a retry's
backoff) is skipped whole, so a later event of an execution or batch is never delivered
before an earlier one. A relay that dies mid-delivery leaves its rows claimed until the claim
ends; then another relay delivers them again: consumers are idempotent by event id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, literal_column, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from wtb_ray.storage import rows
from wtb_ray.storage.schema import batch_webhooks, outbox, outbox_applied, relay_leases

# A literal, not a parameter: the planners then match the partial indexes on pending rows.
PENDING = literal_column("'pending'")
WINDOW = 4  # claims look for aggregate heads among this many times their size of rows
CLAIMED_COLS = (outbox.c.id, outbox.c.event_id, outbox.c.aggregate_type, outbox.c.aggregate_id,
                outbox.c.kind, outbox.c.batch_id, outbox.c.node, outbox.c.checkpoint_id,
                outbox.c.payload, outbox.c.attempts, outbox.c.available_at,
                outbox.c.created_at)


def _insert(conn: Connection, table):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


# -- claiming ---------------------------------------------------------------------------


def _heads(now: float, limit: int, before: int | None):
    earlier = outbox.alias("earlier")
    has_earlier = (select(earlier.c.id)
                   .where(earlier.c.status == PENDING,
                          earlier.c.aggregate_type == outbox.c.aggregate_type,
                          earlier.c.aggregate_id == outbox.c.aggregate_id,
                          earlier.c.id < outbox.c.id)
                   .exists())
    window = () if before is None else (outbox.c.id < before,)
    return (select(outbox.c.aggregate_type, outbox.c.aggregate_id)
            .where(outbox.c.status == PENDING, outbox.c.available_at <= now, *window,
                   ~has_earlier)
            .order_by(outbox.c.id).limit(limit)
            .with_for_update(skip_locked=True, of=outbox))  # SQLite has no row locks: omitted


def claim(conn: Connection, owner: str, now: float, until: float, limit: int
          ) -> tuple[list[Any], dict[str, set[str]]]:
    """Claim up to ``limit`` rows for ``owner`` until ``until``; returns them in id order, and
    for each that some consumers already applied, which ones (see outbox_applied)."""
    # Heads are looked for among the oldest pending rows only: with a deep backlog of few
    # aggregates, finding every head would read the whole backlog on every claim.
    before = conn.execute(select(outbox.c.id).where(outbox.c.status == PENDING)
                          .order_by(outbox.c.id).offset(WINDOW * limit).limit(1)).scalar()
    heads = [tuple(r) for r in conn.execute(_heads(now, limit, before))]
    if not heads:
        return [], {}
    candidates = conn.execute(
        select(*CLAIMED_COLS)
        .where(outbox.c.status == PENDING,
               tuple_(outbox.c.aggregate_type, outbox.c.aggregate_id).in_(heads))
        .order_by(outbox.c.id).limit(limit)).all()
    taken, blocked = [], set()
    for row in candidates:  # each aggregate's prefix of rows that are available now
        aggregate = (row.aggregate_type, row.aggregate_id)
        if aggregate in blocked or row.available_at > now:
            blocked.add(aggregate)
            continue
        taken.append(row)
    ids = [r.id for r in taken]
    conn.execute(update(outbox).where(outbox.c.id.in_(ids))
                 .values(claimed_by=owner, available_at=until))
    applied: dict[str, set[str]] = {}
    for event_id, consumer in conn.execute(
            select(outbox_applied.c.event_id, outbox_applied.c.consumer)
            .where(outbox_applied.c.event_id.in_([r.event_id for r in taken]))):
        applied.setdefault(event_id, set()).add(consumer)
    return taken, applied


# -- settling ---------------------------------------------------------------------------


@dataclass
class Settlement:
    """What became of a claim: rows delivered, rows that failed (with the time of their next
    attempt, or dead), rows handed back untried, and per-consumer progress to remember."""

    delivered: list[int] = field(default_factory=list)
    failed: list[tuple[int, str, float, bool]] = field(default_factory=list)  # id, error, at, dead
    released: list[int] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)  # (event_id, consumer)
    forget: list[str] = field(default_factory=list)  # event ids whose progress rows can go


def settle(conn: Connection, owner: str, now: float, s: Settlement
           ) -> tuple[list[Any], list[Any]]:
    """Apply a settlement to the rows ``owner`` still holds. Returns the rows this call moved
    to delivered and to dead (id, kind, created_at): each row moves there once, ever."""
    mine = (outbox.c.status == PENDING, outbox.c.claimed_by == owner)
    delivered = []
    if s.delivered:
        delivered = conn.execute(
            update(outbox).where(outbox.c.id.in_(s.delivered), *mine)
            .values(status="delivered", delivered_at=now, attempts=outbox.c.attempts + 1,
                    claimed_by=None)
            .returning(outbox.c.id, outbox.c.kind, outbox.c.created_at)).all()
    dead = []
    for row_id, error, retry_at, is_dead in s.failed:
        moved = conn.execute(
            update(outbox).where(outbox.c.id == row_id, *mine)
            .values(status="dead" if is_dead else "pending", attempts=outbox.c.attempts + 1,
                    last_error=error[:2000], available_at=retry_at, claimed_by=None)
            .returning(outbox.c.id, outbox.c.kind, outbox.c.created_at)).all()
        if is_dead:
            dead.extend(moved)
    if s.released:
        conn.execute(update(outbox).where(outbox.c.id.in_(s.released), *mine)
                     .values(available_at=now, claimed_by=None))
    if s.applied:
        conn.execute(_insert(conn, outbox_applied).on_conflict_do_nothing(),
                     [{"event_id": e, "consumer": c, "applied_at": now} for e, c in s.applied])
    if s.forget:
        conn.execute(delete(outbox_applied).where(outbox_applied.c.event_id.in_(s.forget)))
    return delivered, dead


# -- the SQLite relay lease -----------------------------------------------------------------


def take_lease(conn: Connection, name: str, owner: str, now: float, until: float) -> bool:
    """Take or renew the lease ``name``; False while another owner holds it."""
    stmt = _insert(conn, relay_leases).values(name=name, owner=owner, expires_at=until)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"owner": stmt.excluded.owner, "expires_at": stmt.excluded.expires_at},
        where=or_(relay_leases.c.owner == owner, relay_leases.c.expires_at < now)))
    holder = conn.execute(select(relay_leases.c.owner)
                          .where(relay_leases.c.name == name)).scalar_one()
    return holder == owner


def drop_lease(conn: Connection, name: str, owner: str) -> None:
    conn.execute(delete(relay_leases).where(relay_leases.c.name == name,
                                            relay_leases.c.owner == owner))


# -- operators: status, dead letters, webhooks ---------------------------------------------


def status(conn: Connection, now: float | None = None) -> dict[str, Any]:
    """Rows by status, how long the oldest pending one has waited, and what is in flight."""
    now = now or time.time()
    counts = dict(conn.execute(select(outbox.c.status, func.count())
                               .group_by(outbox.c.status)).all())
    oldest, in_flight = conn.execute(
        select(func.min(outbox.c.created_at),
               func.count(outbox.c.claimed_by)).where(outbox.c.status == PENDING)).one()
    dead_kinds = dict(conn.execute(select(outbox.c.kind, func.count())
                                   .where(outbox.c.status == "dead")
                                   .group_by(outbox.c.kind)).all())
    leases = [dict(r._mapping) for r in conn.execute(select(relay_leases))]
    return {"pending": counts.get("pending", 0), "delivered": counts.get("delivered", 0),
            "dead": counts.get("dead", 0), "in_flight": in_flight,
            "oldest_lag_s": round(max(0.0, now - oldest), 3) if oldest else 0.0,
            "dead_by_kind": dead_kinds, "relay_leases": leases}


def dead_rows(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    stmt = (select(outbox.c.id, outbox.c.event_id, outbox.c.kind, outbox.c.aggregate_type,
                   outbox.c.aggregate_id, outbox.c.attempts, outbox.c.last_error)
            .where(outbox.c.status == "dead").order_by(outbox.c.id).limit(limit))
    return [dict(r._mapping) for r in conn.execute(stmt)]


def retry_dead(conn: Connection, now: float, ids: list[int] | None = None) -> int:
    """Give dead rows back to the relay with a fresh set of attempts."""
    stmt = update(outbox).where(outbox.c.status == "dead")
    if ids is not None:
        stmt = stmt.where(outbox.c.id.in_(ids))
    return conn.execute(stmt.values(status="pending", attempts=0, available_at=now,
                                    claimed_by=None)).rowcount


def add_webhook(conn: Connection, batch_id: str, url: str, secret: str | None,
                events: list[str]) -> None:
    conn.execute(_insert(conn, batch_webhooks).values(
        batch_id=batch_id, url=url, secret=secret, events=rows.dumps(events)))


def webhooks(conn: Connection, batch_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The webhook of each batch that has one: url, secret (None: the configured one), events."""
    found = conn.execute(select(batch_webhooks).where(batch_webhooks.c.batch_id.in_(batch_ids)))
    return {r.batch_id: {"url": r.url, "secret": r.secret, "events": rows.loads(r.events)}
            for r in found}
