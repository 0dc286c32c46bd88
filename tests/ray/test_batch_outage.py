"""A batch outlives a database outage longer than its driver's retries: PostgreSQL through a
PgBouncer of its own, stopped for real mid-batch and started again. Whoever follows the
batch (`wtb batch run`, a Ray job) follows it through the outage too."""

import contextlib
import threading
import time
import uuid

import pytest
import ray

from actors import client
from actors.executor import VariantExecutionActor
from tests.conftest import start_pgbouncer
from tests.integration.test_batch_local import check_matrix_results, matrix_spec
from tests.ray.conftest import wait_for
from tests.ray.test_batches_on_ray import finish, held_spec, node_runs, submit
from wtb_ray.batch.service import BatchService
from wtb_ray.config import Settings


def test_a_batch_whose_driver_gave_up_in_an_outage_completes_once_the_database_is_back(
        ray_cluster, create_pg_database, bench_factory, tmp_path):
    bouncer = start_pgbouncer()
    name = f"wtb-orchestrator-{uuid.uuid4().hex[:8]}"
    try:
        url = bouncer.url(create_pg_database())
        # Short waits, so that the driver gives up within seconds instead of minutes.
        settings = Settings(database_url=url, executor_idle_seconds=0, orchestrator_name=name,
                            reconnect_seconds=0.5, batch_retry_seconds=0.05)
        spec, point = held_spec(tmp_path)
        orchestrator, batch_id = submit(settings, spec)
        wait_for(tmp_path / f"{point}.waiting")
        outages: list[tuple[str, float, dict | None]] = []
        followed: list[dict | BaseException] = []

        def follower() -> None:
            try:
                followed.append(client.follow(orchestrator, batch_id, lambda p: None,
                                              poll_s=0.2, on_outage=lambda *a: outages.append(a)))
            except BaseException as exc:  # the test reports it
                followed.append(exc)

        following = threading.Thread(target=follower, daemon=True)
        following.start()
        bouncer.stop()
        (tmp_path / f"{point}.go").write_text("")  # its checkpoint finds no database
        deadline = time.time() + 120
        while batch_id not in ray.get(orchestrator.stalled.remote()) or not outages:
            assert time.time() < deadline, f"the driver never gave up: {outages, followed}"
            time.sleep(0.2)
        bouncer.start()
        assert finish(orchestrator, batch_id)["batch"]["status"] == "completed"
        following.join(60)
        # The follower was told of the outage (the database's own error, and when it began)
        # and went on to the batch's end instead of failing with the first unanswered read.
        assert followed and isinstance(followed[0], dict), followed
        assert followed[0]["batch"]["status"] == "completed"
        error, since, _ = outages[0]
        assert "OperationalError" in error and since <= time.time()
        assert len({o[1] for o in outages}) == 1  # one outage, however many polls failed
        assert ray.get(orchestrator.stalled.remote()) == {}
        service = BatchService(bench_factory(url))
        check_matrix_results(service, batch_id)  # every cell completed exactly once
        assert node_runs(tmp_path / "runs.log")[point] >= 2  # its first checkpoint was lost
    finally:
        with contextlib.suppress(ValueError):  # ValueError: never created
            ray.kill(ray.get_actor(name, namespace="wtb"))
        bouncer.stop()


def test_an_orchestrator_restarted_while_the_database_is_away_waits_for_it(
        ray_cluster, create_pg_database, bench_factory, tmp_path):
    """Ray restarts a crashed orchestrator, but never again one whose constructor raised:
    failing on the missing database, it would leave its batches running with no one to
    finish them. It waits for the database instead, then takes its batches over."""
    bouncer = start_pgbouncer()
    name = f"wtb-orchestrator-{uuid.uuid4().hex[:8]}"
    try:
        url = bouncer.url(create_pg_database())
        settings = Settings(database_url=url, executor_idle_seconds=0, orchestrator_name=name,
                            reconnect_seconds=0.5)
        spec, point = held_spec(tmp_path)
        orchestrator, batch_id = submit(settings, spec)
        wait_for(tmp_path / f"{point}.waiting")
        bouncer.stop()
        ray.kill(orchestrator, no_restart=False)  # Ray restarts it at once, database away
        (tmp_path / f"{point}.go").write_text("")
        time.sleep(8)  # its restart tries the database meanwhile (a second or two in)
        bouncer.start()
        assert finish(orchestrator, batch_id)["batch"]["status"] == "completed"
        check_matrix_results(BatchService(bench_factory(url)), batch_id)
    finally:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace="wtb"))
        bouncer.stop()


def test_an_executor_started_while_the_database_is_away_waits_for_it(
        ray_cluster, create_pg_database, bench_factory):
    """The orchestrator starts executors right after reading the database; one starting as
    it went away failed at once, and three such failures failed the batch's cells unstarted
    (as for an environment that cannot be built). It waits for WTB_RECONNECT_SECONDS, as
    every query does; still away after that, it fails, saying why."""
    bouncer = start_pgbouncer()
    executors = []

    def executor(reconnect_seconds: float) -> ray.ObjectRef:
        settings = Settings(database_url=url, reconnect_seconds=reconnect_seconds)
        executors.append(VariantExecutionActor.options(namespace="wtb").remote(
            settings.for_actors()))
        return executors[-1].__ray_ready__.remote()

    try:
        url = bouncer.url(create_pg_database())
        service = BatchService(bench_factory(url))
        batch = service.submit(matrix_spec())
        bouncer.stop()
        with pytest.raises(ray.exceptions.ActorDiedError, match="OperationalError"):
            ray.get(executor(reconnect_seconds=1), timeout=60)  # a node that cannot reach it
        ready = executor(reconnect_seconds=60)
        # Without waiting, its constructor fails within a second or two (after the imports).
        assert ray.wait([ready], timeout=8)[0] == [], "the executor did not wait"
        bouncer.start()
        ray.get(ready, timeout=60)
        cells = [c["id"] for c in service.batches.cells(batch.id)]
        report = ray.get(executors[-1].run.remote(batch.id, cells, False), timeout=120)
        assert report["skipped"] == {} and set(report["statuses"].values()) == {"completed"}
        check_matrix_results(service, batch.id)
    finally:
        for actor in executors:
            ray.kill(actor)
        bouncer.stop()
