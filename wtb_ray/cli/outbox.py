"""`wtb outbox status|retry-dead|relay`: the event outbox and its relay."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Annotated

import typer
from rich.table import Table

from wtb_ray.cli.common import DbOpt, JsonOpt, app, err, guarded, open_bench, out
from wtb_ray.domain.errors import InvalidInput

outbox_app = typer.Typer(no_args_is_help=True,
                         help="The event outbox: delivery status, dead letters, a relay.")
app.add_typer(outbox_app, name="outbox")


@outbox_app.command("status")
@guarded
def status(json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Events pending, delivered and dead, how long the oldest pending one has waited."""
    from wtb_ray.storage import outbox_sql

    with open_bench(db) as bench:
        found = bench.store.run(outbox_sql.status)
        dead = bench.store.run(outbox_sql.dead_rows) if found["dead"] else []
    if json_out:
        print(json.dumps({**found, "dead_examples": dead}))
        return
    out.print(f"pending {found['pending']} (in flight {found['in_flight']}), delivered "
              f"{found['delivered']}, dead {found['dead']}; oldest pending waited "
              f"{found['oldest_lag_s']:.1f} s", highlight=False)
    for lease in found["relay_leases"]:
        left = lease["expires_at"] - time.time()
        out.print(f"relay lease held by {lease['owner']} "
                  + (f"for {left:.0f} s more" if left > 0 else "(expired)"), highlight=False)
    if dead:
        table = Table("id", "kind", "aggregate", "attempts", "last error", box=None,
                      pad_edge=False, title="dead letters (wtb outbox retry-dead)",
                      title_justify="left")
        for row in dead:
            table.add_row(str(row["id"]), row["kind"],
                          f"{row['aggregate_type']} {row['aggregate_id']}",
                          str(row["attempts"]), (row["last_error"] or "")[:120])
        out.print(table)


@outbox_app.command("retry-dead")
@guarded
def retry_dead(given: Annotated[list[str] | None, typer.Option(
                   "--id", metavar="OUTBOX_ID", help="Only this dead event (repeatable).")
               ] = None,
               json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Give dead events back to the relay, each with a fresh set of attempts."""
    from wtb_ray.storage import outbox_sql

    # Parsed here rather than by Typer, so a bad id gets the one-line error of bad input.
    bad = [i for i in given or [] if not i.isdigit() or int(i) < 1]
    if bad:
        raise InvalidInput(f"--id expects outbox ids (positive integers), got {bad[0]!r}")
    ids = [int(i) for i in given] if given is not None else None
    with open_bench(db) as bench:
        n = bench.store.run(outbox_sql.retry_dead, time.time(), ids, write=True)
    if json_out:
        print(json.dumps({"requeued": n}))
    else:
        out.print(f"{n} dead event(s) given back to the relay", highlight=False)


@outbox_app.command("relay")
@guarded
def relay(once: Annotated[bool, typer.Option(
              "--once", help="Deliver what is deliverable now, then exit.")] = False,
          json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Run an outbox relay in this process (webhooks and WTB_OUTBOX_CONSUMERS; the event
    feed lives on Ray) until interrupted. On a cluster the OutboxRelay actor does this."""
    from wtb_ray.outbox.relay import build

    with open_bench(db) as bench:
        relay = build(bench.settings, bench.store)
        try:
            if once:
                relay.drain()
                if relay.standby:
                    err.print("another relay holds this SQLite database's relay lease: "
                              "nothing was claimed", highlight=False)
            else:
                _run_until_signal(relay)
        finally:
            relay.close()
    figures = relay.metrics.snapshot()
    if json_out:
        print(json.dumps(figures))
    else:
        out.print(f"delivered {figures['delivered']} event(s), {figures['dead']} dead",
                  highlight=False)


def _run_until_signal(relay) -> None:
    worker = threading.Thread(target=relay.run, name="wtb-outbox-relay", daemon=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    worker.start()
    err.print(f"relaying outbox events as {relay.owner} (Ctrl-C stops)", highlight=False)
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        relay.stop()
        worker.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
