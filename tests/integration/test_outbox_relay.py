"""The outbox relay with real failures, on SQLite and on PostgreSQL through PgBouncer: a relay
process killed between delivering and marking, a webhook receiver (a real HTTP server) that
fails, dead letters given back, two relays at once, PgBouncer restarted under a relay."""

import json
import signal
import subprocess
import threading
import time
from collections import defaultdict

import pytest
from sqlalchemy import select

from tests.conftest import start_pgbouncer, subprocess_env, wtb_cmd
from tests.outbox_faults import MARKER
from tests.webhook_receiver import Receiver
from tests.workflows import chain
from wtb_ray.batch.local import run_local
from wtb_ray.batch.service import BatchService
from wtb_ray.batch.spec import parse_spec
from wtb_ray.config import Settings
from wtb_ray.engine import group
from wtb_ray.engine.bench import Bench
from wtb_ray.outbox.consumers import FeedConsumer
from wtb_ray.outbox.feed import EventFeed
from wtb_ray.outbox.relay import Relay, RelayPolicy, build
from wtb_ray.storage import outbox_sql
from wtb_ray.storage.schema import outbox
from wtb_ray.storage.store import Store

SECRET = "test-webhook-secret-0123456789"


@pytest.fixture
def bench(fresh_durable_url, tmp_path):
    b = Bench(Store.open(fresh_durable_url, auto_migrate=True), settings=Settings(home=tmp_path))
    yield b
    b.close()


@pytest.fixture
def receiver():
    r = Receiver(SECRET)
    yield r
    r.stop()


def batch_spec(url, cases=3, events=("*",), secret=SECRET, **extra):
    webhook = {"url": url, "events": list(events), **({"secret": secret} if secret else {})}
    return parse_spec({"workflow": "tests.workflows:chain", "name": "hooked", "chunk_size": 50,
                       "cases": [{"id": f"c{i}", "input": {"total": i}} for i in range(cases)],
                       "webhook": webhook, **extra})


def run_batch(bench, spec):
    service = BatchService(bench)
    return run_local(service, service.submit(spec).id)


def outbox_rows(store):
    return store.run(lambda c: [dict(r._mapping) for r in c.execute(
        select(outbox).order_by(outbox.c.id))])


def stop_relay(relay: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60
               ) -> tuple[str, str]:
    """Signal the relay to stop (SIGTERM, as a service manager does, unless told), then its
    output once it exits. One that does not exit in time is aborted: started with
    PYTHONFAULTHANDLER=1, it prints every thread's stack, which the failure shows."""
    relay.send_signal(sig)
    try:
        return relay.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        relay.send_signal(signal.SIGABRT)
        try:
            _, err = relay.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            relay.kill()
            _, err = relay.communicate()
        pytest.fail(f"the relay did not exit within {timeout} s of {signal.Signals(sig).name}; "
                    f"its stderr ends:\n{err[-6000:]}")


def ctrl_c_reaches_it() -> None:
    """In the relay's process, before it starts: Ctrl-C (SIGINT) handled as in a terminal.
    A test run started in the background by a shell without job control ignores SIGINT, and
    so would the relay (it leaves an ignored SIGINT ignored, as it should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def in_order_per_aggregate(events):
    """Each aggregate's events arrived in the order they were written (outbox id order)."""
    seen = defaultdict(list)
    for e in events:
        key = ("batch", e["batch_id"]) if e["kind"].startswith("batch.") else e["execution_id"]
        seen[key].append(e["id"])
    return all(ids == sorted(ids) for ids in seen.values())


def test_every_event_is_delivered_once_in_order_and_counted_once(bench):
    group.run_many(bench, [e.id for e in group.create_many(
        bench, chain, [{"input": {"total": i}} for i in range(30)])])
    feed, arrivals = EventFeed(), []

    def publish(events):
        arrivals.extend(events)
        return feed.publish(events)

    relay = Relay(bench.store, [FeedConsumer(publish)], policy=RelayPolicy(batch_size=40))
    assert relay.drain() == 30 * 7
    rows = outbox_rows(bench.store)
    assert {r["status"] for r in rows} == {"delivered"} and len(rows) == 210
    assert all(r["attempts"] == 1 and r["claimed_by"] is None for r in rows)
    delivered = feed.after(0, limit=1000)
    assert [e["event_id"] for e in delivered] == [r["event_id"] for r in rows]
    assert feed.applied == feed.received == 210
    assert in_order_per_aggregate(arrivals)
    counted = relay.metrics.snapshot()
    assert counted["delivered"] == 210 and counted["delivered_by_kind"]["node.completed"] == 120
    assert relay.drain() == 0 and relay.metrics.snapshot()["delivered"] == 210
    relay.close()


def test_a_relay_killed_between_delivering_and_marking_delivers_twice_applied_once(
        bench, receiver, tmp_path, fresh_durable_url):
    batch = run_batch(bench, batch_spec(receiver.url))
    total = len(outbox_rows(bench.store))
    env = subprocess_env(fresh_durable_url, WTB_HOME=str(tmp_path), WTB_OUTBOX_CLAIM_SECONDS="2",
                         WTB_OUTBOX_CONSUMERS='["tests.outbox_faults:crash_after_delivery"]')
    first = subprocess.run(wtb_cmd("outbox", "relay", "--once", "--json"), env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 1 and first.stdout == ""  # os._exit(1) inside the round
    crashed_on = (tmp_path / MARKER).read_text().split(",")
    assert len(crashed_on) == total  # one claim held them all, and the webhook got them
    assert {r["status"] for r in outbox_rows(bench.store)} == {"pending"}
    assert len(receiver.requests) == total

    # The next relay waits out the dead one's claim (2 s), then delivers everything again.
    delivered = 0
    deadline = time.time() + 60
    while delivered < total:
        assert time.time() < deadline, "the claims of the dead relay never ended"
        again = subprocess.run(wtb_cmd("outbox", "relay", "--once", "--json"), env=env,
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        delivered += json.loads(again.stdout)["delivered"]
        time.sleep(0.2)
    assert delivered == total  # the metrics consumer counted each event once, across both
    assert {r["status"] for r in outbox_rows(bench.store)} == {"delivered"}
    assert len(receiver.requests) == 2 * total  # delivered twice...
    assert sorted(receiver.applied) == sorted(crashed_on)  # ...applied once each
    assert all(r.signed_ok and r.status == 200 for r in receiver.requests)
    assert in_order_per_aggregate([receiver.applied[k] for k in receiver.order])
    assert {e["batch_id"] for e in receiver.applied.values()} == {batch.id}


def test_a_webhook_failing_its_first_three_deliveries_gets_the_event_once_after(
        bench, receiver):
    receiver.fail_first = 3
    batch = run_batch(bench, batch_spec(receiver.url, events=["batch.*"]))
    relay = build(Settings(outbox_backoff_seconds=0.05, outbox_max_attempts=5),
                  bench.store)
    deadline = time.time() + 60
    while len(receiver.applied) < 3:  # created, started, completed
        assert time.time() < deadline, receiver.requests
        relay.run_once()
        time.sleep(0.05)
    created = [r for r in receiver.requests if r.kind == "batch.created"]
    assert [r.status for r in created] == [500, 500, 500, 200]
    assert len({r.key for r in created}) == 1 and all(r.signed_ok for r in receiver.requests)
    assert [receiver.applied[k]["kind"] for k in receiver.order] == [
        "batch.created", "batch.started", "batch.completed"]  # the rest waited for it
    row = next(r for r in outbox_rows(bench.store) if r["kind"] == "batch.created")
    assert row["status"] == "delivered" and row["attempts"] == 4
    assert "HTTP 500" in row["last_error"]
    assert receiver.applied[row["event_id"]]["batch_id"] == batch.id
    assert batch.spec["webhook"] == {"url": receiver.url, "events": ["batch.*"]}  # no secret
    relay.close()


def test_dead_letters_are_given_back_by_the_cli_and_the_configured_secret_signs(
        bench, receiver, fresh_durable_url):
    from typer.testing import CliRunner

    from wtb_ray.cli import app

    receiver.fail_first = 10**6
    run_batch(bench, batch_spec(receiver.url, events=["batch.completed"], secret=None))
    settings = Settings(outbox_backoff_seconds=0.01, outbox_max_attempts=2,
                        webhook_secret=SECRET)
    relay = build(settings, bench.store)
    deadline = time.time() + 60
    while not relay.metrics.snapshot()["dead"]:
        assert time.time() < deadline
        relay.run_once()
        time.sleep(0.02)
    cli = CliRunner()
    status = json.loads(cli.invoke(app, ["outbox", "status", "--json", "--db",
                                         fresh_durable_url]).stdout)
    assert status["dead"] == 1 and status["dead_by_kind"] == {"batch.completed": 1}
    assert "HTTP 500" in status["dead_examples"][0]["last_error"]

    receiver.fail_first = 0
    bad = cli.invoke(app, ["outbox", "retry-dead", "--id", "-3", "--db", fresh_durable_url])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1
    given = cli.invoke(app, ["outbox", "retry-dead", "--json", "--db", fresh_durable_url])
    assert json.loads(given.stdout) == {"requeued": 1}
    relay.drain()
    assert [receiver.applied[k]["kind"] for k in receiver.order] == ["batch.completed"]
    assert all(r.signed_ok for r in receiver.requests)  # with WTB_WEBHOOK_SECRET
    relay.close()


def test_a_relay_stopped_mid_round_settles_that_round_before_it_exits(fresh_durable_url,
                                                                      tmp_path):
    """Ctrl-C asks the relay to stop: it finishes delivering and settling the events it
    claimed, then closes its consumers and store, and exits with its figures. (Closed under
    the round, as when a KeyboardInterrupt ended the wait for it, its webhook client and
    store failed the round's deliveries.)"""
    receiver = Receiver(SECRET, delay_s=0.05)
    with Bench(Store.open(fresh_durable_url, auto_migrate=True),
               settings=Settings(home=tmp_path)) as bench:
        run_batch(bench, batch_spec(receiver.url, cases=2))
        total = len(outbox_rows(bench.store))
    env = subprocess_env(fresh_durable_url, WTB_HOME=str(tmp_path), PYTHONFAULTHANDLER="1",
                         WTB_OUTBOX_BATCH_SIZE=str(total))  # one round claims them all
    relay = subprocess.Popen(wtb_cmd("outbox", "relay", "--json"), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=ctrl_c_reaches_it)
    try:
        assert "(Ctrl-C stops)" in relay.stderr.readline()
        deadline = time.time() + 30
        while not receiver.requests:  # the round is under way
            assert time.time() < deadline and relay.poll() is None
            time.sleep(0.005)
        at_signal = len(receiver.requests)
        out, err = stop_relay(relay, signal.SIGINT)
    finally:
        receiver.stop()
        if relay.poll() is None:
            relay.kill()
    assert relay.returncode == 0, err
    assert at_signal < total / 2  # the signal came early in the round
    store = Store.open(fresh_durable_url)
    try:
        rows = outbox_rows(store)
    finally:
        store.close()
    assert json.loads(out)["delivered"] == total == len(receiver.applied)
    assert all(r["status"] == "delivered" and r["claimed_by"] is None for r in rows)


def test_a_relay_started_with_sigint_ignored_keeps_it_ignored_and_says_how_to_stop_it(
        fresh_durable_url, tmp_path):
    """A job started in the background by a shell without job control ignores SIGINT, so
    that a Ctrl-C meant for the foreground does not reach it; the relay leaves it ignored,
    names the signal that does stop it, and stops on that one with its figures."""
    env = subprocess_env(fresh_durable_url, WTB_HOME=str(tmp_path), PYTHONFAULTHANDLER="1",
                         WTB_AUTO_MIGRATE="1")
    relay = subprocess.Popen(wtb_cmd("outbox", "relay", "--json"), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert f"(SIGTERM to {relay.pid} stops)" in relay.stderr.readline()
        relay.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # still relaying
            relay.wait(timeout=1.5)
        out, err = stop_relay(relay)
    finally:
        if relay.poll() is None:
            relay.kill()
    assert relay.returncode == 0, err
    assert json.loads(out)["delivered"] == 0


def test_two_relays_on_postgres_never_deliver_one_event_at_once(create_pg_database, pgbouncer,
                                                                tmp_path):
    url = pgbouncer.url(create_pg_database())
    receiver = Receiver(SECRET, delay_s=0.005)
    env = subprocess_env(url, WTB_OUTBOX_BATCH_SIZE="25", WTB_OUTBOX_POLL_INTERVAL_SECONDS="0.02",
                         PYTHONFAULTHANDLER="1")
    relays = [subprocess.Popen(wtb_cmd("outbox", "relay", "--json"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        for p in relays:  # both relays are up before the first event is written
            assert "relaying outbox events" in p.stderr.readline()
        with Bench(Store.open(url), settings=Settings(home=tmp_path)) as bench:
            run_batch(bench, batch_spec(receiver.url, cases=40))
            total = len(outbox_rows(bench.store))
        deadline = time.time() + 120
        store = Store.open(url)
        try:  # every event applied and its row settled: no relay is between the two
            while len(receiver.applied) < total or any(
                    r["status"] != "delivered" for r in outbox_rows(store)):
                assert time.time() < deadline, f"{len(receiver.applied)} of {total} delivered"
                assert all(p.poll() is None for p in relays)
                time.sleep(0.1)
        finally:
            store.close()
        figures = []
        for p in relays:
            out, err = stop_relay(p)
            assert p.returncode == 0, err
            figures.append(json.loads(out))
    finally:
        receiver.stop()
        for p in relays:
            if p.poll() is None:
                p.kill()
    assert all(f["delivered"] > 0 for f in figures)  # both relays did work...
    assert sum(f["delivered"] for f in figures) == total
    # ...and no event went out twice, so never two at once either
    assert len(receiver.requests) == total == len({r.key for r in receiver.requests})
    assert in_order_per_aggregate([receiver.applied[k] for k in receiver.order])


def test_a_relay_keeps_going_across_a_pgbouncer_restart(create_pg_database, tmp_path):
    bouncer = start_pgbouncer()
    try:
        url = bouncer.url(create_pg_database())
        bench = Bench(Store.open(url), settings=Settings(home=tmp_path))
        bench.store.reconnect_seconds = 2.0
        feed = EventFeed()
        relay = Relay(bench.store, [FeedConsumer(feed.publish)],
                      policy=RelayPolicy(poll_interval_s=0.05))
        worker = threading.Thread(target=relay.run, daemon=True)
        worker.start()
        first = bench.run(chain, {"total": 1})
        wait_until(lambda: len(feed.after(0, execution_id=first.id)) == 7)
        bouncer.stop()
        time.sleep(1.0)  # rounds fail meanwhile: the relay logs them and backs off
        bouncer.start()
        second = bench.run(chain, {"total": 2})
        wait_until(lambda: len(feed.after(0, execution_id=second.id)) == 7)
        relay.stop()
        worker.join(30)
        assert feed.applied == 14 and bench.store.run(outbox_sql.status)["delivered"] == 14
        bench.close()
    finally:
        bouncer.stop()


def wait_until(predicate, timeout=60):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
