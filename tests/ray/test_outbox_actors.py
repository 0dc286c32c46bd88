"""The outbox relay, event feed and integrity cron actors on the session's local Ray instance,
on SQLite and on PostgreSQL through PgBouncer: the relay actor's process killed between
delivering and marking, Ray restarting it; the cron recovering dead runners on the cluster."""

import contextlib
import time
import uuid
from collections import defaultdict

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from actors import event_feed, integrity_cron, outbox_relay
from tests.outbox_faults import MARKER
from tests.workflows import chain
from wtb_ray.batch.service import BatchService
from wtb_ray.batch.spec import parse_spec
from wtb_ray.config import Settings
from wtb_ray.domain.execution import Status
from wtb_ray.engine import group
from wtb_ray.engine.bench import Bench
from wtb_ray.storage import integrity_sql, outbox_sql
from wtb_ray.storage.schema import executions
from wtb_ray.storage.store import Store


@pytest.fixture
def settings(ray_cluster, fresh_durable_url, tmp_path):
    """A database of its own and actors of its own, killed afterwards."""
    tag = uuid.uuid4().hex[:8]
    s = Settings(database_url=fresh_durable_url, home=tmp_path, executor_idle_seconds=0,
                 orchestrator_name=f"wtb-orchestrator-{tag}",
                 outbox_relay_name=f"wtb-outbox-relay-{tag}",
                 event_feed_name=f"wtb-event-feed-{tag}",
                 integrity_cron_name=f"wtb-integrity-cron-{tag}",
                 outbox_poll_interval_seconds=0.05, outbox_claim_seconds=2)
    yield s
    for name in (s.outbox_relay_name, s.integrity_cron_name, s.orchestrator_name,
                 s.event_feed_name):
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace="wtb"), no_restart=True)


def bench_for(settings):
    return Bench(Store.open(settings.url, auto_migrate=True), settings=settings)


def wait_until(predicate, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def scrape(ray_cluster, metric):
    """Samples of a Ray metric from the local instance's Prometheus endpoint."""
    text = httpx.get(f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics", timeout=5).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(f"ray_{metric}")]


def test_a_relay_actor_killed_between_delivering_and_marking_feeds_each_event_once(
        settings, ray_cluster):
    settings = settings.model_copy(
        update={"outbox_consumers": ["tests.outbox_faults:crash_after_delivery"]})
    with bench_for(settings) as bench:
        created = group.create_many(bench, chain, [{"input": {"total": i}} for i in range(5)])
        group.run_many(bench, [e.id for e in created])
        written = [r["event_id"] for r in bench.store.outbox_events()]
        assert len(written) == 35
        feed = event_feed.get_or_create(settings)
        relay = outbox_relay.get_or_create(settings)
        # Its first round delivers every event to the feed, then the process dies (os._exit);
        # Ray restarts it, and once the dead relay's claim ends (2 s) it delivers them again.
        wait_until(lambda: bench.store.run(outbox_sql.status)["delivered"] == 35,
                   what="the events to be marked delivered")
    assert sorted((settings.home / MARKER).read_text().split(",")) == sorted(written)
    stats = ray.get(feed.stats.remote())
    assert stats["received"] == 70 and stats["applied"] == 35  # delivered twice, applied once
    fed = ray.get(feed.wait.remote(0, timeout=5))
    assert [e["event_id"] for e in fed] == written
    per_execution = defaultdict(list)
    for e in fed:
        per_execution[e["execution_id"]].append(e["kind"])
    assert all(kinds[0] == "execution.created" and kinds[-1] == "execution.completed"
               for kinds in per_execution.values())
    one = created[0].id
    assert [e["execution_id"] for e in ray.get(feed.wait.remote(0, execution_id=one,
                                                                timeout=5))] == [one] * 7
    assert ray.get(feed.wait.remote(fed[-1]["id"], timeout=0.2)) == []  # nothing newer
    # The restarted relay marked (and counted) all 35; the dead one counted none.
    assert ray.get(relay.stats.remote())["delivered"] == 35

    def exported():
        samples = [s for s in scrape(ray_cluster, "wtb_outbox_delivered")
                   if s.name.endswith("_total")]
        return sum(s.value for s in samples) == 35 and {
            s.labels["kind"] for s in samples} >= {"node.completed", "execution.created"}

    wait_until(exported, timeout=90, what="the relay's metrics")  # Ray exports every few s


def test_the_integrity_cron_recovers_dead_runners_on_the_cluster(settings, ray_cluster):
    settings = settings.model_copy(update={"integrity_interval_seconds": 1.0})
    with bench_for(settings) as bench:
        single = bench.run(chain, {"total": 1}, break_after=["b"])
        service = BatchService(bench)
        batch = service.submit(parse_spec({
            "workflow": "tests.workflows:chain", "parallelism": 1,
            "cases": [{"id": f"c{i}", "input": {"total": i}} for i in range(3)]}))
        cell = service.batches.cells(batch.id)[0]["id"]
        with bench.store.write() as c:  # their runners died: leases expired long ago
            c.execute(update(executions).where(executions.c.id.in_([single.id, cell])).values(
                status="running", lease_owner="gone-host:4242:x",
                lease_expires_at=time.time() - 60, attempts=1))
        integrity_cron.get_or_create(settings)  # runs the checks every second from now on
        wait_until(lambda: bench.get(single.id).status is Status.COMPLETED
                   and service.batches.get(batch.id).status == "completed",
                   what="the cron to recover the runs")
        for ex_id in (single.id, cell):
            assert "execution.recovered" in [e.kind for e in bench.history(ex_id)]
        assert [b.node for b in bench.boundaries(single.id)] == ["a", "b", "c", "d"]
        reports = bench.store.run(integrity_sql.reports, 1000)
    found = [r for r in reports if r["found"]]
    assert found and found[-1]["trigger"] == "cron" and found[-1]["repaired"] == 2
    wait_until(lambda: any(s.value > 0 for s in scrape(
        ray_cluster, "wtb_integrity_last_run_timestamp_seconds")), timeout=90,
        what="the cron's metrics")
