"""Control an execution from processes other than the one that runs it, for real.

Each step here is a separate `wtb` process against the same database: the embedded SQLite file,
or PostgreSQL through PgBouncer.
"""

import json
import logging
import os
import signal
import subprocess
import time

import pytest

from tests import workflows
from tests.conftest import start_pgbouncer, subprocess_env, wtb_cmd
from wtb_ray import Status
from wtb_ray.engine.bench import Bench
from wtb_ray.storage.store import Store


def wtb(url, *args, check=True):
    result = subprocess.run(wtb_cmd(*args, "--json"), capture_output=True, text=True,
                            env=subprocess_env(url), timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"wtb {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return json.loads(result.stdout) if result.stdout.strip() else None


def start_held_run(url, tmp_path, hold_at, *extra):
    """`wtb run` in the background, held inside node ``hold_at``; returns (process, id)."""
    hold = tmp_path / "hold"
    hold.mkdir(exist_ok=True)
    state = {"log_path": str(tmp_path / "runs.log"), "hold_at": hold_at, "hold_dir": str(hold)}
    proc = subprocess.Popen(wtb_cmd("run", "tests.workflows:chain", "--input", json.dumps(state),
                                    "--json", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(url))
    execution_id = proc.stderr.readline().split()[1]  # "execution <id> created"
    deadline = time.time() + 60
    while not (hold / f"{hold_at}.waiting").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the run never reached its hold point"
        time.sleep(0.02)
    return proc, execution_id, hold


def node_runs(tmp_path):
    return (tmp_path / "runs.log").read_text().split()


@pytest.fixture
def inspect_store(durable_url):
    store = Store.open(durable_url, auto_migrate=True)
    yield Bench(store)
    store.close()


def test_pause_in_one_process_then_resume_rollback_and_fork_from_others(
        durable_url, tmp_path, inspect_store):
    Store.open(durable_url, auto_migrate=True).close()
    runner, ex_id, hold = start_held_run(durable_url, tmp_path, "b")

    requested = wtb(durable_url, "pause", ex_id)["execution"]
    assert requested["control"] == "pause" and requested["status"] == "running"
    (hold / "b.go").write_text("")
    out, err = runner.communicate(timeout=60)
    paused = json.loads(out)
    assert runner.returncode == 0, err
    assert paused["execution"]["status"] == "paused" and paused["execution"]["step"] == 2
    assert node_runs(tmp_path) == ["a", "b"]

    resumed = wtb(durable_url, "resume", ex_id)
    assert resumed["execution"]["status"] == "completed"
    assert node_runs(tmp_path) == ["a", "b", "c", "d"]

    checkpoints = wtb(durable_url, "checkpoints", ex_id)["checkpoints"]
    after_b = next(c for c in checkpoints if c["node"] == "b")
    expected = inspect_store.state(ex_id, after_b["id"])
    rolled = wtb(durable_url, "rollback", ex_id, "--to", str(after_b["id"]))
    assert rolled["execution"]["status"] == "paused" and rolled["state"] == expected
    assert inspect_store.state(ex_id) == expected
    again = wtb(durable_url, "checkpoints", ex_id)["checkpoints"]
    assert len(again) == len(checkpoints)  # nothing deleted
    assert {c["id"] for c in again if not c["on_branch"]} == {
        c["id"] for c in checkpoints if c["node"] in ("c", "d")}

    origin_state = inspect_store.state(ex_id)
    fork = wtb(durable_url, "fork", ex_id, "--at", str(after_b["id"]),
               "--patch", json.dumps({"total": 500, "hold_at": None}), "--variant", "b=bonus")
    assert fork["execution"]["status"] == "completed"
    assert fork["execution"]["parent_execution_id"] == ex_id
    assert fork["state"]["c"] == 500 * 3 + 1
    assert inspect_store.state(ex_id) == origin_state  # the origin did not move
    assert inspect_store.get(ex_id).status is Status.PAUSED

    finished = wtb(durable_url, "resume", ex_id)
    assert finished["execution"]["status"] == "completed"
    assert inspect_store.state(fork["execution"]["id"]) == fork["state"]  # and the fork neither


def test_a_killed_runner_resumes_from_its_last_checkpoint(durable_url, tmp_path, inspect_store):
    Store.open(durable_url, auto_migrate=True).close()
    runner, ex_id, hold = start_held_run(durable_url, tmp_path, "c")
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(30)
    crashed = inspect_store.get(ex_id)
    assert crashed.status is Status.RUNNING and crashed.step == 2  # a and b are committed

    (hold / "c.go").write_text("")
    resumed = wtb(durable_url, "resume", ex_id)
    assert resumed["execution"]["status"] == "completed"
    assert node_runs(tmp_path) == ["a", "b", "c", "c", "d"]  # only the killed node reran
    kinds = [e.kind for e in inspect_store.history(ex_id)]
    assert "execution.recovered" in kinds
    assert [b.node for b in inspect_store.boundaries(ex_id)] == ["a", "b", "c", "d"]


def test_a_fork_reads_its_origin_across_a_pgbouncer_restart(create_pg_database, caplog):
    """A fork reads its origin on the store's own connection, which a PgBouncer restart
    drops: the read goes through the pool instead (retried), and the fork is made."""
    bouncer = start_pgbouncer()
    try:
        bench = Bench(Store.open(bouncer.url(create_pg_database()), auto_migrate=True))
        ex = bench.run(workflows.chain, {"total": 1})
        bench.store.checkpoint_with_state(ex.id, None)  # the read connection is open
        bouncer.stop()
        time.sleep(0.5)
        bouncer.start()
        with caplog.at_level(logging.WARNING, logger="wtb_ray.storage.store"):
            fork = bench.fork(ex.id, run=False, patch={"total": 2})
        assert "connection lost while reading execution" in caplog.text  # it did drop
        assert bench.state(fork.id) == {**bench.state(ex.id), "total": 2}
        assert bench.store.checkpoint_with_state(ex.id, None)[2][0] == bench.state(ex.id)
        bench.close()
    finally:
        bouncer.stop()


def test_a_run_survives_a_pgbouncer_restart(create_pg_database, tmp_path):
    bouncer = start_pgbouncer()
    try:
        url = bouncer.url(create_pg_database())
        runner, ex_id, hold = start_held_run(url, tmp_path, "b")
        bouncer.stop()
        time.sleep(0.5)
        bouncer.start()
        (hold / "b.go").write_text("")
        out, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, err
        assert json.loads(out)["execution"]["status"] == "completed"
        bench = Bench(Store.open(url))
        assert [b.node for b in bench.boundaries(ex_id)] == ["a", "b", "c", "d"]
        assert len(bench.checkpoints(ex_id)) == 5
        assert len(bench.history(ex_id)) == 7  # created, started, 4 nodes, completed
        bench.close()
    finally:
        bouncer.stop()
