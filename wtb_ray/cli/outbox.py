"""`wtb outbox status|retry-dead|relay`: the event outbox and its relay."""

from __future__ import annotations

import json
import os
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
    """Relay on a worker thread until SIGINT or SIGTERM, then wait for its round to end:
    the caller closes the consumers and the store after this returns. A signal only asks
    the relay to stop; a KeyboardInterrupt raised into the join below would not do: Python
    3.11 then takes the thread for finished while it still runs (Thread.join after an
    interrupted join returns at once), and the store was closed under its last round. A
    second Ctrl-C stops waiting. SIGINT is left alone if it was ignored (a job started in
    the background without job control)."""
    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and relay.stopping:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the round
        relay.stop()

    worker = threading.Thread(target=relay.run, name="wtb-outbox-relay", daemon=True)
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    worker.start()
    stops = "Ctrl-C stops" if signal.SIGINT in signals else f"SIGTERM to {os.getpid()} stops"
    err.print(f"relaying outbox events as {relay.owner} ({stops})", highlight=False)
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        err.print("interrupted again: not waiting for the round under way; the events it "
                  "claimed are delivered again once the claim runs out "
                  "(WTB_OUTBOX_CLAIM_SECONDS)", highlight=False)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
