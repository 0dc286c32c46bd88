"""Outbox relay: how fast a relay drains a backlog, and how long events wait at a steady rate.

Drain: ``--events`` outbox rows spread over ``--aggregates`` executions are written first;
then one relay (default Settings: 500 events per claim) delivers them to the event feed
consumer and the metrics consumer, each claim and each settle a transaction of its own.
events/s = events / time to drain.

Lag: a writer commits one event per transaction at ``--rate`` events/s for ``--seconds``
while a relay runs with the default poll interval (0.2 s); an event's lag is delivered_at -
created_at as stored in its row. Reported: p95 (and p50, max).

Both on embedded SQLite and on PostgreSQL through PgBouncer (transaction mode).
Targets: >= 1,000 events/s drained; p95 lag <= 1 s at 100 events/s. Last line: JSON.

    python bench/outbox_relay.py [--events N] [--aggregates N] [--rate R] [--seconds S]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, select

from bench._common import pgbouncer, report, scratch_database
from wtb_ray.config import Settings
from wtb_ray.domain.events import Event
from wtb_ray.outbox.consumers import FeedConsumer
from wtb_ray.outbox.feed import EventFeed
from wtb_ray.outbox.relay import Relay, RelayPolicy
from wtb_ray.storage import queries, rows
from wtb_ray.storage.schema import outbox
from wtb_ray.storage.store import Store

KINDS = ("execution.started", "node.completed", "node.completed", "node.completed",
         "execution.completed")


def event_row(aggregate: str, n: int) -> dict:
    return rows.outbox_row(Event(KINDS[n % len(KINDS)], aggregate, f"node{n % 7}", None,
                                 {"step": n, "variant": "default", "ms": 1.25}))


def relay_for(store: Store) -> tuple[Relay, EventFeed]:
    feed = EventFeed(size=1_000_000)
    policy = RelayPolicy.from_settings(Settings())  # the defaults a deployment starts with
    return Relay(store, [FeedConsumer(feed.publish)], policy=policy), feed


def drain_rate(store: Store, events: int, aggregates: int) -> float:
    ids = [uuid.uuid4().hex[:16] for _ in range(aggregates)]
    batch = [event_row(ids[n % aggregates], n) for n in range(events)]
    for i in range(0, len(batch), 1000):
        store.run(lambda c, part: c.execute(insert(outbox), part), batch[i:i + 1000],
                  write=True)
    relay, feed = relay_for(store)
    started = time.perf_counter()
    relay.drain()
    elapsed = time.perf_counter() - started
    relay.close()
    assert feed.applied == events, f"{feed.applied} of {events} delivered"
    return events / elapsed


def steady_lags(store: Store, rate: float, seconds: float, aggregates: int) -> list[float]:
    relay, _ = relay_for(store)
    worker = threading.Thread(target=relay.run, daemon=True)
    worker.start()
    ids = [uuid.uuid4().hex[:16] for _ in range(aggregates)]
    first = store.run(lambda c: c.execute(select(outbox.c.id).order_by(outbox.c.id.desc())
                                          .limit(1)).scalar() or 0)
    start, n = time.monotonic(), 0
    while n < rate * seconds:
        delay = start + n / rate - time.monotonic()  # a schedule, so slow commits do not
        if delay > 0:                               # lower the rate
            time.sleep(delay)
        row = event_row(ids[n % aggregates], n)
        row["created_at"] = row["available_at"] = time.time()
        store.run(lambda c, r: c.execute(insert(outbox), [r]), row, write=True)
        n += 1
    deadline = time.time() + 60
    while store.run(queries.outbox_backlog)[0] and time.time() < deadline:
        time.sleep(0.05)
    relay.stop()
    worker.join(30)
    relay.close()
    return store.run(lambda c: [r.delivered_at - r.created_at for r in c.execute(
        select(outbox.c.created_at, outbox.c.delivered_at).where(outbox.c.id > first))])


def measure(url: str, args: argparse.Namespace) -> tuple[float, list[float]]:
    store = Store.open(url, auto_migrate=True)
    try:
        rate = drain_rate(store, args.events, args.aggregates)
        lags = steady_lags(store, args.rate, args.seconds, args.aggregates)
    finally:
        store.close()
    return rate, lags


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--aggregates", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s for the lag run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_rate, sqlite_lags = measure(f"sqlite:///{tmp}/wtb.db", args)
    with pgbouncer() as port, scratch_database() as name:
        pg_rate, pg_lags = measure(f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}",
                                   args)
    rows_out, figures = [], {}
    for backend, rate, lags in (("sqlite", sqlite_rate, sqlite_lags),
                                ("pgbouncer", pg_rate, pg_lags)):
        rows_out += [(f"{backend}: drained events/s ({args.events} events)", f"{rate:,.0f}"),
                     (f"{backend}: lag at {args.rate:g} events/s, p50 / p95 / max (s)",
                      f"{statistics.median(lags):.3f} / {p95(lags):.3f} / {max(lags):.3f}"
                      f"  ({len(lags)} events)")]
        figures |= {f"{backend}_events_per_s": rate, f"{backend}_p95_lag_s": p95(lags),
                    f"{backend}_p50_lag_s": statistics.median(lags)}
    report(rows_out, figures)


if __name__ == "__main__":
    main()
