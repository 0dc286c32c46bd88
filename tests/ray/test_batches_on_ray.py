"""Batches on a local Ray instance, on SQLite and on PostgreSQL through PgBouncer, with real
failures: executors killed by Ray and by os._exit, the orchestrator killed and restarted."""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
import ray

from actors import client
from actors.orchestrator import NAMESPACE, BatchOrchestrator, get_or_create
from tests.conftest import ROOT
from tests.integration.test_batch_local import check_matrix_results, matrix_spec
from tests.ray.conftest import wait_for
from wtb_ray.batch.local import run_local

# For what Ray does, not the database (runtime environments, metrics, the driver's waiting):
# the same on both, and each run costs seconds.
SQLITE_ONLY = pytest.mark.parametrize("durable_url", ["sqlite"], indirect=True)


def submit(ray_settings, spec):
    orchestrator = get_or_create(ray_settings)
    return orchestrator, ray.get(orchestrator.submit.remote(spec.model_dump(mode="json")))


def finish(orchestrator, batch_id, timeout=240):
    status = ray.get(orchestrator.wait.remote(batch_id, timeout))
    assert not status["driving"], f"batch still running after {timeout} s: {status}"
    return status


def executors(orchestrator, batch_id):
    return ray.get(orchestrator.executors.remote(batch_id))


def kill_all_and_wait(names, timeout=60):
    """Kill every actor at once (one by one, the orchestrator would hand the held cell to a
    survivor in between). ray.kill marks an actor dead at once, but its process can live a
    moment longer (and finish what it was doing): wait until each process itself is gone."""
    actors = [ray.get_actor(name, namespace="wtb") for name in names]
    pids = ray.get([a.info.remote() for a in actors], timeout=30)  # answers while a chunk runs
    for actor in actors:
        ray.kill(actor, no_restart=True)
    deadline = time.time() + timeout
    for pid in (p["pid"] for p in pids):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.time() < deadline, f"process {pid} survived ray.kill"
            time.sleep(0.05)


def node_runs(log):
    return Counter(log.read_text().split())


def held_spec(tmp_path, x=3, combo='{"a":"default","b":"default"}', **extra):
    """The matrix spec where one cell holds inside node b until the test lets it go."""
    spec = matrix_spec(**extra).model_dump(mode="json")
    for case in spec["cases"]:
        case["input"].update(log_path=str(tmp_path / "runs.log"), hold_dir=str(tmp_path))
        if case["input"]["x"] == x:
            case["input"]["hold_at"] = f"b:{x}:{combo}"
    return matrix_spec(**{**extra, "cases": spec["cases"]}), f"b:{x}:{combo}"


def test_matrix_runs_on_ray_and_matches_the_in_process_run(ray_settings, service):
    orchestrator, batch_id = submit(ray_settings, matrix_spec())
    status = finish(orchestrator, batch_id)
    assert status["batch"]["status"] == "completed" and status["batch"]["completed"] == 30
    check_matrix_results(service, batch_id)

    local = run_local(service, service.submit(matrix_spec()).id)

    def comparable(batch_id):
        return sorted((r["combo"], r["case_id"], r["repeat"], r["status"], r["passed"],
                       r["node_count"], json.dumps(r["metrics"], sort_keys=True))
                      for r in service.batches.results(batch_id))

    assert comparable(batch_id) == comparable(local.id)
    on_ray = [(r.combo, r.pass_rate, r.vs_best, r.ci_low, r.ci_high, r.significant, r.metrics)
              for r in service.leaderboard(batch_id)]
    assert on_ray == [(r.combo, r.pass_rate, r.vs_best, r.ci_low, r.ci_high, r.significant,
                       r.metrics) for r in service.leaderboard(local.id)]


def test_batches_submitted_together_share_the_executors(ray_settings, service):
    """Three batches at once on two CPUs, executors kept warm for an hour: each batch gets
    the executors the one before it releases. (Were a batch to start executors of its own,
    they would wait for the CPUs the warm ones hold: an hour.)"""
    settings = ray_settings.model_copy(update={"executor_idle_seconds": 3600})
    orchestrator = get_or_create(settings)
    spec = matrix_spec().model_dump(mode="json")
    batch_ids = ray.get([orchestrator.submit.remote(spec) for _ in range(3)])
    for batch_id in batch_ids:
        status = finish(orchestrator, batch_id, timeout=180)
        assert status["batch"]["status"] == "completed" and status["batch"]["completed"] == 30
    for batch_id in batch_ids:
        check_matrix_results(service, batch_id)


def test_batches_beyond_batch_concurrency_wait_their_turn_as_pending(ray_settings, service,
                                                                     tmp_path):
    orchestrator = get_or_create(ray_settings.model_copy(update={"batch_concurrency": 1}))
    spec, point = held_spec(tmp_path)
    first = ray.get(orchestrator.submit.remote(spec.model_dump(mode="json")))
    wait_for(tmp_path / f"{point}.waiting")
    second = ray.get(orchestrator.submit.remote(matrix_spec().model_dump(mode="json")))
    for _ in range(20):  # driven at once, it would be running within milliseconds
        assert ray.get(orchestrator.status.remote(second))["batch"]["status"] == "pending"
        time.sleep(0.1)
    (tmp_path / f"{point}.go").write_text("")
    for batch_id in (first, second):
        assert finish(orchestrator, batch_id)["batch"]["status"] == "completed"
        check_matrix_results(service, batch_id)


@SQLITE_ONLY
def test_each_variant_runs_in_its_own_runtime_env(ray_settings, service):
    spec = matrix_spec(
        variants={"c": ["alpha", "beta"]},
        runtime_env={"c=alpha": {"env_vars": {"WTB_TEST_FLAVOR": "alpha"}},
                     "c=beta": {"env_vars": {"WTB_TEST_FLAVOR": "beta"},
                                "pip": ["six==1.16.0"]}})
    orchestrator, batch_id = submit(ray_settings, spec)
    assert finish(orchestrator, batch_id, timeout=400)["batch"]["completed"] == 10
    seen = {(service.bench.state(c["id"])["flavor"], service.bench.state(c["id"])["six"])
            for c in service.batches.cells(batch_id)}
    import six  # the driver's own environment

    assert seen == {("alpha", six.__version__), ("beta", "1.16.0")}
    assert six.__version__ != "1.16.0"


def test_an_executor_killed_by_ray_loses_nothing(ray_settings, service, tmp_path):
    spec, point = held_spec(tmp_path)
    orchestrator, batch_id = submit(ray_settings, spec)
    wait_for(tmp_path / f"{point}.waiting")
    kill_all_and_wait(executors(orchestrator, batch_id))
    (tmp_path / f"{point}.go").write_text("")
    assert finish(orchestrator, batch_id)["batch"]["status"] == "completed"
    check_matrix_results(service, batch_id)
    runs = node_runs(tmp_path / "runs.log")
    assert all(n == 1 for name, n in runs.items() if name.startswith("a:"))  # never rerun
    held = next(c["id"] for c in service.batches.cells(batch_id)
                if c["case"] == "x3" and c["combo"] == point.split(":", 2)[2])
    recoveries = [e.kind for e in service.bench.history(held)].count("execution.recovered")
    # Each recovery re-ran only the interrupted node, from its entry checkpoint. (Usually one;
    # a second when a replacement took the cell before the last kill landed.)
    assert recoveries >= 1 and runs[point] == 1 + recoveries
    assert all(n in (1, 2) for name, n in runs.items() if name.startswith("b:") and name != point)


def test_an_executor_that_dies_inside_a_node_loses_nothing(ray_settings, service, tmp_path):
    spec = matrix_spec().model_dump(mode="json")
    for case in spec["cases"]:
        case["input"].update(log_path=str(tmp_path / "runs.log"), hold_dir=str(tmp_path))
        if case["input"]["x"] == 2:
            case["input"]["exit_at"] = "b"  # the first b of x=2 calls os._exit(1)
    orchestrator, batch_id = submit(ray_settings, matrix_spec(cases=spec["cases"]))
    assert finish(orchestrator, batch_id)["batch"]["status"] == "completed"
    assert (tmp_path / "b.2.exited").exists()
    check_matrix_results(service, batch_id)
    runs = node_runs(tmp_path / "runs.log")
    assert all(n == 1 for name, n in runs.items() if name.startswith("a:"))
    assert sum(n for name, n in runs.items() if name.startswith("b:2:")) >= 7


def test_the_orchestrator_killed_mid_batch_restarts_and_completes_every_cell_once(
        ray_settings, service, tmp_path):
    spec, point = held_spec(tmp_path)
    orchestrator, batch_id = submit(ray_settings, spec)
    wait_for(tmp_path / f"{point}.waiting")
    ray.kill(orchestrator, no_restart=False)  # Ray restarts it; its executors die with it
    (tmp_path / f"{point}.waiting").unlink()
    wait_for(tmp_path / f"{point}.waiting")  # the restarted one took the held cell over
    (tmp_path / f"{point}.go").write_text("")
    assert finish(orchestrator, batch_id)["batch"]["status"] == "completed"
    check_matrix_results(service, batch_id)  # 30 cells, each completed exactly once
    assert len(service.batches.cells(batch_id)) == 30


HOLD_A_CELL = """
import os, sys, time
from pathlib import Path
from wtb_ray.config import Settings
from wtb_ray.engine.bench import Bench
from wtb_ray.engine.group import claim_many
url, cell, hold = sys.argv[1:]
runs, skipped = claim_many(Bench.open(Settings(database_url=url, lease_seconds=600)), [cell])
assert runs, skipped
Path(hold, "claimed").write_text("")
while not Path(hold, "exit").exists():
    time.sleep(0.05)
os._exit(0)  # dies holding the cell, as a killed executor does
"""


@SQLITE_ONLY
def test_a_cell_held_by_a_live_process_keeps_its_batch_driven_until_it_is_taken_over(
        ray_settings, service, tmp_path):
    """A killed executor can take seconds to exit (10 s seen on a loaded machine): its cells
    look alive meanwhile. The driver must wait for them, not leave the batch running with no
    one to finish it once the other cells are done."""
    batch = service.submit(matrix_spec())
    held = service.batches.cells(batch.id)[0]["id"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_CELL, ray_settings.url, held,
                               str(tmp_path)], cwd=ROOT)
    try:
        wait_for(tmp_path / "claimed", timeout=60)
        orchestrator = get_or_create(ray_settings)
        ray.get(orchestrator.schedule.remote(batch.id))
        deadline = time.time() + 120
        while Counter(c["status"] for c in service.batches.cells(batch.id))["completed"] < 29:
            assert time.time() < deadline, service.progress(batch.id)
            time.sleep(0.2)
        status = ray.get(orchestrator.wait.remote(batch.id, 2))  # past the driver's recount
        assert status["driving"] and status["batch"]["status"] == "running", status
        (tmp_path / "exit").write_text("")
        assert holder.wait(30) == 0
    finally:
        holder.kill()
    assert finish(orchestrator, batch.id)["batch"]["status"] == "completed"
    check_matrix_results(service, batch.id)
    kinds = [e.kind for e in service.bench.history(held)]
    assert kinds.count("execution.recovered") == 1


def test_always_failing_variant_fails_after_max_attempts_on_ray(ray_settings, service):
    spec = matrix_spec(variants={"a": ["default"], "b": ["default", "fails"]}, max_attempts=3)
    orchestrator, batch_id = submit(ray_settings, spec)
    status = finish(orchestrator, batch_id)
    assert (status["batch"]["completed"], status["batch"]["failed"]) == (5, 5)
    attempts = {c["status"]: c["attempts"] for c in service.batches.cells(batch_id)}
    assert attempts == {"completed": 1, "failed": 3}


def test_cancel_stops_scheduling_and_cancels_the_rest(ray_settings, service, tmp_path):
    spec, point = held_spec(tmp_path, x=1, chunk_size=2, parallelism=1)
    orchestrator, batch_id = submit(ray_settings, spec)
    wait_for(tmp_path / f"{point}.waiting")
    ray.get(orchestrator.cancel.remote(batch_id))
    (tmp_path / f"{point}.go").write_text("")
    status = finish(orchestrator, batch_id)
    assert status["batch"]["status"] == "cancelled"
    cells = service.batches.cells(batch_id)
    statuses = Counter(c["status"] for c in cells)
    assert set(statuses) <= {"completed", "cancelled"} and statuses["cancelled"] >= 26
    never_started = [c for c in cells if c["status"] == "cancelled" and c["attempts"] == 0]
    assert len(never_started) >= 26


@SQLITE_ONLY
def test_batch_progress_is_exported_as_ray_metrics(ray_settings, ray_cluster):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    orchestrator, batch_id = submit(ray_settings, matrix_spec())
    assert finish(orchestrator, batch_id)["batch"]["status"] == "completed"
    url = f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics"
    deadline = time.time() + 90  # Ray exports metrics every few seconds
    seen = {}
    while time.time() < deadline and seen.get("completed") != 30:
        for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
            if family.name == "ray_wtb_batch_cells":
                seen = {s.labels["status"]: s.value for s in family.samples
                        if s.labels.get("batch") == batch_id}
        time.sleep(1)
    assert seen.get("completed") == 30 and seen.get("pending") == 0


def test_batch_metrics_keep_no_state_for_batches_that_cannot_change(ray_cluster):
    from actors.metrics import BatchMetrics

    metrics = BatchMetrics()
    metrics.observe("done", {"{}": {"completed": 3, "failed": 1}})
    metrics.observe("waiting", {"{}": {"completed": 1, "paused": 2}})
    metrics.forget("done")
    metrics.forget("waiting")  # its paused cells may still finish: counting goes on
    assert set(metrics._seen) == {"waiting"}


@SQLITE_ONLY
def test_cells_whose_runtime_env_cannot_be_set_up_fail_naming_it_and_the_rest_complete(
        ray_settings, service):
    spec = matrix_spec(variants={"c": ["alpha", "beta"]},
                       runtime_env={"c=beta": {"pip": ["wtb-no-such-package==0.0.1"]}})
    orchestrator, batch_id = submit(ray_settings, spec)
    status = finish(orchestrator, batch_id, timeout=400)
    assert status["batch"]["status"] == "completed"
    assert (status["batch"]["completed"], status["batch"]["failed"]) == (5, 5)
    results = service.batches.results(batch_id)
    assert len(results) == 10  # every cell scored, the failed ones too
    for row in results:
        if json.loads(row["combo"])["c"] == "beta":
            assert row["status"] == "failed" and not row["passed"]
            assert row["error"].startswith("ExecutorStartError: an executor for runtime_env")
            assert "wtb-no-such-package" in row["error"]
        else:
            assert row["status"] == "completed"
    beta = [c for c in service.batches.cells(batch_id) if c["status"] == "failed"]
    assert len(beta) == 5 and all(c["error"]["type"] == "ExecutorStartError" for c in beta)
    history = [e.kind for e in service.bench.history(beta[0]["id"])]
    assert "execution.started" not in history and history[-1] == "execution.failed"


def test_a_batch_persisted_but_never_handed_to_the_orchestrator_still_runs(ray_settings,
                                                                            service):
    orchestrator = get_or_create(ray_settings)
    ray.get(orchestrator.boot.remote())
    # As the HTTP API does, minus its schedule call: as if the replica died right after.
    batch = service.submit(matrix_spec())
    deadline = time.time() + 120
    while service.batches.get(batch.id).status != "completed":
        assert time.time() < deadline, service.progress(batch.id)
        time.sleep(0.2)
    check_matrix_results(service, batch.id)


class _StatusReadWhileTheDriverEnds(BatchOrchestrator.__ray_actor_class__):
    """An orchestrator whose reads of a batch's status are slow: each answers what it read
    only once the batch's driver has ended (the race `wtb demo` once lost, made certain)."""

    async def status(self, batch_id):
        read = await super().status(batch_id)
        deadline = time.monotonic() + 120
        while batch_id in self.drivers and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return read


@SQLITE_ONLY
def test_a_batch_whose_driver_ends_during_a_status_read_is_followed_to_its_end(ray_settings,
                                                                             service):
    """A status read while the driver runs says "running"; if the driver ends before the
    answer goes out, the answer must still say it is driven, or `follow` (behind `wtb batch
    run` and `wtb demo`) stops at a batch that is still running."""
    orchestrator = ray.remote(_StatusReadWhileTheDriverEnds).options(
        name=ray_settings.orchestrator_name, namespace=NAMESPACE).remote(
        ray_settings.for_actors())
    batch_id = ray.get(orchestrator.submit.remote(matrix_spec().model_dump(mode="json")))
    first = ray.get(orchestrator.wait.remote(batch_id, 0.05), timeout=240)
    assert first["driving"] or first["batch"]["status"] == "completed", first
    final = client.follow(orchestrator, batch_id, lambda progress: None, poll_s=0.05)
    assert final["batch"]["status"] == "completed" and not final["driving"]
    check_matrix_results(service, batch_id)
