"""The integrity checker on SQLite and on PostgreSQL through PgBouncer: a clean database of
more than 10,000 rows has no findings; 50 corruptions of every kind are all found and
repaired; the CLI stores and shows the reports."""

import json
import os
import time

import pytest
from sqlalchemy import delete, insert, select, update
from typer.testing import CliRunner

from tests.workflows import chain, failing, loop
from wtb_ray.batch.local import run_local
from wtb_ray.batch.service import BatchService
from wtb_ray.batch.spec import parse_spec
from wtb_ray.cli import app
from wtb_ray.config import Settings
from wtb_ray.domain.execution import Status
from wtb_ray.engine import group
from wtb_ray.engine.bench import Bench
from wtb_ray.integrity.checker import IntegrityChecker
from wtb_ray.integrity.findings import KINDS
from wtb_ray.outbox.consumers import FeedConsumer
from wtb_ray.outbox.feed import EventFeed
from wtb_ray.outbox.relay import Relay
from wtb_ray.storage import gc
from wtb_ray.storage.schema import (
    audit_log,
    batches,
    blobs,
    checkpoints,
    damaged_checkpoints,
    executions,
    node_boundaries,
    outbox,
)
from wtb_ray.storage.store import Store

ROWS = ("executions", "checkpoints", "blobs", "node_boundaries", "audit_log", "outbox")


@pytest.fixture
def bench(fresh_durable_url, tmp_path):
    b = Bench(Store.open(fresh_durable_url, auto_migrate=True),
              settings=Settings(home=tmp_path, gc_grace_seconds=3600))
    yield b
    b.close()


def run_group(bench, wf, inputs, **options):
    created = group.create_many(bench, wf, [{"input": i, **options} for i in inputs])
    group.run_many(bench, [e.id for e in created])
    return created


def small_batch(bench, n):
    service = BatchService(bench)
    spec = parse_spec({"workflow": "tests.workflows:chain", "name": f"b{n}",
                       "cases": [{"id": f"c{i}", "input": {"total": i}} for i in range(2)]})
    return run_local(service, service.submit(spec).id)


def seed(bench, executions):
    """Real runs, quickly: loops of 10 nodes in group commits, failures, breakpoints, a fork,
    a rollback, a workspace, batches; values big enough to be stored as blobs."""
    run_group(bench, loop, [{"until": 10, "note": f"run {i} " * 8} for i in range(executions)])
    run_group(bench, failing, [{"note": f"failing {i} " * 8} for i in range(5)])
    paused = run_group(bench, chain, [{"total": i, "note": f"paused {i} " * 8}
                                      for i in range(10)], break_after=["b"])
    bench.fork(paused[0].id, patch={"total": 99})
    done = bench.run(chain, {"total": 5})
    bench.rollback(done.id, "c")
    bench.run(chain, {"total": 6}, workspace=True)
    for n in range(2):
        small_batch(bench, n)
    return paused


def test_a_clean_database_of_over_10000_rows_has_no_findings(bench):
    seed(bench, executions=230)
    counts = bench.store.table_counts()
    assert sum(counts[t] for t in ROWS) >= 10_000, counts
    report = IntegrityChecker(bench).run(repair=True)
    assert report.found == 0, [(f.kind, f.detail) for f in report.findings[:10]]
    assert report.counts() == {k: {"found": 0, "repaired": 0} for k in KINDS}


def test_50_injected_corruptions_are_all_found_and_repaired(bench):
    paused = seed(bench, executions=20)
    store, now = bench.store, time.time()
    batch_ids = [small_batch(bench, n).id for n in range(2, 9)]

    def ids(stmt):
        return store.run(lambda c: [r[0] for r in c.execute(stmt)])

    completed = ids(select(node_boundaries.c.id).where(node_boundaries.c.status == "completed")
                    .order_by(node_boundaries.c.id))
    dangling, unaudited = completed[:8], completed[8:15]
    # Blobs exactly one checkpoint names: the input notes of the paused runs
    lonely = [json.loads(m)["note"] for m in ids(
        select(checkpoints.c.manifest).where(
            checkpoints.c.execution_id.in_([p.id for p in paused[3:10]]),
            checkpoints.c.kind == "start"))]
    stuck = ids(select(outbox.c.id).where(outbox.c.status == "pending")
                .order_by(outbox.c.id.desc()).limit(7))

    with store.write() as c:
        for i, b in enumerate(dangling):
            c.execute(update(node_boundaries).where(node_boundaries.c.id == b)
                      .values(exit_checkpoint_id=10**9 + i))
        for b in unaudited:
            row = c.execute(select(node_boundaries).where(node_boundaries.c.id == b)).one()
            c.execute(delete(audit_log).where(
                audit_log.c.execution_id == row.execution_id, audit_log.c.node == row.node,
                audit_log.c.kind == "node.completed",
                audit_log.c.checkpoint_id == row.exit_checkpoint_id))
        c.execute(delete(blobs).where(blobs.c.hash.in_(lonely)))
        c.execute(insert(blobs), [{"hash": os.urandom(16).hex(), "codec": "j", "size": 9,
                                   "data": b'"garbage"', "created_at": now - 7200}
                                  for _ in range(7)])
        for batch_id in batch_ids:
            c.execute(update(batches).where(batches.c.id == batch_id)
                      .values(completed=0, failed=2))
        c.execute(update(outbox).where(outbox.c.id.in_(stuck)).values(
            created_at=now - 7200, claimed_by="a-relay-that-died", available_at=now + 10**6))
    assert len(lonely) == 7
    # Runners that died: four to recover (three of them mid-run), three out of attempts.
    loops = [e.id for e in store.executions(status="completed", limit=500)
             if e.workflow_name == "loop"]
    runners_died = [p.id for p in paused[:3]] + loops[:4]
    with store.write() as c:
        for n, ex_id in enumerate(runners_died):
            c.execute(update(executions).where(executions.c.id == ex_id).values(
                status="running", lease_owner="gone-host:4242:x", lease_expires_at=now - 60,
                attempts=1 if n < 4 else 3))

    report = IntegrityChecker(bench).run(repair=True)
    assert {k: c["found"] for k, c in report.counts().items()} == {
        "expired_lease": 7, "boundary_missing_checkpoint": 8, "boundary_missing_audit": 7,
        "checkpoint_missing_blob": 7, "unreachable_blob": 7, "batch_count_mismatch": 7,
        "stuck_outbox": 7}, [(f.kind, f.detail) for f in report.findings]
    assert report.found == 50 and report.repaired == 50, [
        (f.kind, f.repair) for f in report.findings if not f.repaired]

    statuses = [store.execution(i).status for i in runners_died]
    assert statuses == [Status.COMPLETED] * 4 + [Status.FAILED] * 3
    assert all("execution.recovered" in [e.kind for e in store.history(i)]
               for i in runners_died[:4])
    assert store.execution(runners_died[4]).error["type"] == "RunnerLost"
    assert len(ids(select(damaged_checkpoints.c.checkpoint_id))) == 7
    assert ids(select(node_boundaries.c.exit_checkpoint_id)
               .where(node_boundaries.c.id.in_(dangling))) == [None] * 8
    for batch_id in batch_ids:
        b = BatchService(bench).batches.get(batch_id)
        assert (b.completed, b.failed) == (2, 0)

    relay = Relay(store, [FeedConsumer(EventFeed().publish)])
    relay.drain()  # the released stuck events go out now
    relay.close()
    again = IntegrityChecker(bench).run()
    assert again.found == 0, [(f.kind, f.detail) for f in again.findings]
    assert gc.scan(store, time.time() - 3600).missing == {*lonely}  # reported, not forgotten


def test_a_stuck_event_a_live_relay_holds_is_left_to_it(bench):
    bench.run(chain, {"total": 1})
    store, now = bench.store, time.time()
    live, free, waiting = store.run(lambda c: [r[0] for r in c.execute(
        select(outbox.c.id).order_by(outbox.c.id).limit(3))])
    with store.write() as c:
        c.execute(update(outbox).values(created_at=now - 7200))
        c.execute(update(outbox).where(outbox.c.id == live)
                  .values(claimed_by="a-live-relay", available_at=now + 10))
        c.execute(update(outbox).where(outbox.c.id == waiting).values(available_at=now + 250))
    report = IntegrityChecker(bench).run(repair=True)
    outcome = {f.ids["outbox"]: (f.repaired, f.repair) for f in report.findings
               if f.ids["outbox"] in (live, free, waiting)}
    assert outcome[live] == (False, "left alone: a relay is delivering it right now")
    assert not outcome[free][0] and "no relay is delivering" in outcome[free][1]
    assert outcome[waiting] == (True, "its next retry brought forward to now")
    rows = {r["id"]: r for r in store.outbox_events()}
    assert rows[live]["claimed_by"] == "a-live-relay" and rows[waiting]["available_at"] <= (
        time.time())


def test_the_cli_checks_stores_and_shows_reports(bench, fresh_durable_url):
    cli = CliRunner()

    def wtb(*args):
        return cli.invoke(app, [*args, "--db", fresh_durable_url])

    bench.run(chain, {"total": 1})
    first = wtb("integrity", "check", "--json")
    assert first.exit_code == 0 and json.loads(first.stdout)["found"] == 0
    store = bench.store
    with store.write() as c:
        c.execute(insert(blobs).values(hash="0" * 32, codec="j", size=2, data=b"{}",
                                       created_at=time.time() - 7200))
    found = wtb("integrity", "check", "--json")
    assert found.exit_code == 1  # a finding is left: scripts can alert on it
    assert json.loads(found.stdout)["counts"]["unreachable_blob"] == {"found": 1,
                                                                      "repaired": 0}
    fixed = json.loads(wtb("integrity", "check", "--repair", "--json").stdout)
    assert fixed["findings"][0]["repair"] == "collected"
    last = json.loads(wtb("integrity", "report", "--last", "--json").stdout)
    assert last["id"] == fixed["id"] and last["findings"] == fixed["findings"]
    listed = json.loads(wtb("integrity", "report", "--json").stdout)["reports"]
    assert [r["found"] for r in listed] == [1, 1, 0] and listed[0]["repair"] is True
    human = wtb("integrity", "report", "--last")
    assert "unreachable_blob" in human.stdout and "collected" in human.stdout
    bad = wtb("integrity", "report", "--limit", "0")
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0
