"""Undo actions for side effects: a real table's rows are removed by rollback, exactly once,
even when the rollback process is killed midway and run again.

Runs on embedded SQLite and on PostgreSQL through PgBouncer (``durable_url``); the ledger
table lives in the same database.
"""

import functools
import json
import os
import signal
import subprocess
import time

import pytest

from tests import side_effects
from tests.conftest import subprocess_env, wtb_cmd
from wtb_ray import END, InvalidTransition, Status, Workflow
from wtb_ray.domain.errors import CompensationFailed


@pytest.fixture
def bench(durable_url, bench_factory):
    side_effects.setup_tables(durable_url)
    return bench_factory(durable_url)


def ledger_state(url, tmp_path, **control):
    return {"db": url, "calls": str(tmp_path / "calls"), "control": control}


def calls(tmp_path, ex_id):
    lines = (tmp_path / "calls").read_text().split() if (tmp_path / "calls").exists() else []
    return [line[len(ex_id) + 1:] for line in lines]


def test_rollback_undoes_side_effects_newest_first_exactly_once(bench, durable_url, tmp_path):
    ex = bench.run(side_effects.ledger, ledger_state(durable_url, tmp_path))
    rows = lambda table="ledger": side_effects.rows(durable_url, table, ex.id)  # noqa: E731
    assert rows() == [f"{ex.id}-a-1", f"{ex.id}-b-2", f"{ex.id}-c-3"]
    cps = bench.checkpoints(ex.id)

    bench.rollback(ex.id, cps[1].id)  # undoes b and c, newest first
    assert rows() == [f"{ex.id}-a-1"] and calls(tmp_path, ex.id) == ["c-3", "b-2"]
    assert [(c["node"], c["status"]) for c in bench.compensations(ex.id)] == [
        ("a", "pending"), ("b", "done"), ("c", "done")]
    bench.rollback(ex.id, cps[1].id)  # nothing left to undo there
    assert calls(tmp_path, ex.id) == ["c-3", "b-2"]

    assert bench.resume(ex.id).status is Status.COMPLETED  # b and c run (and insert) again
    assert len(rows()) == 3
    bench.rollback(ex.id, cps[0].id)
    assert rows() == [] and calls(tmp_path, ex.id) == ["c-3", "b-2", "c-3", "b-2", "a-1"]
    assert len(rows("undo_log")) == 5
    kinds = [e.kind for e in bench.history(ex.id)]
    assert kinds.count("execution.rolling_back") == 2 and kinds[-1] == "execution.rolled_back"


def test_a_failing_compensation_stops_the_rollback_and_can_be_run_again(
        bench, durable_url, tmp_path):
    flag = tmp_path / "refuse"
    ex = bench.run(side_effects.ledger, ledger_state(durable_url, tmp_path, fail=str(flag)))
    start = bench.checkpoints(ex.id)[0].id
    flag.write_text("")
    with pytest.raises(CompensationFailed) as caught:
        bench.rollback(ex.id, start)
    message = str(caught.value)
    assert "compensation tests.side_effects:delete_row" in message
    assert "node 'c' (step 3)" in message and f"RuntimeError: refusing to delete {ex.id}-c-3" in (
        message)
    stuck = bench.get(ex.id)
    assert stuck.status is Status.ROLLING_BACK and stuck.lease_owner is None
    assert stuck.error["type"] == "CompensationFailed"
    assert len(side_effects.rows(durable_url, "ledger", ex.id)) == 3
    with pytest.raises(InvalidTransition, match="run the rollback again"):
        bench.resume(ex.id)
    flag.unlink()
    done = bench.rollback(ex.id, start)
    assert done.status is Status.PAUSED and done.error is None
    assert side_effects.rows(durable_url, "ledger", ex.id) == []
    assert [c["attempts"] for c in bench.compensations(ex.id)] == [1, 1, 2]


def test_a_failed_node_is_undone_by_a_rollback_to_where_it_started(bench, durable_url, tmp_path):
    ex = bench.run(side_effects.ledger, {**ledger_state(durable_url, tmp_path), "fail_at": "b"})
    assert ex.status is Status.FAILED
    assert side_effects.rows(durable_url, "ledger", ex.id) == [f"{ex.id}-a-1", f"{ex.id}-b-2"]
    failed = [c for c in bench.compensations(ex.id) if c["node"] == "b"]
    assert failed[0]["checkpoint_id"] is None  # no exit checkpoint: the run failed
    bench.rollback(ex.id, ex.head_checkpoint_id)
    assert side_effects.rows(durable_url, "ledger", ex.id) == [f"{ex.id}-a-1"]


def _refuses(fn, *args):
    def node(state, ctx):
        ctx.on_rollback(fn, *args)

    return Workflow("refuse", nodes={"n": node}, edges={"n": END}, entry="n")


class Holder:
    def method(self):
        pass


def test_only_importable_functions_and_json_arguments_are_stored(bench):
    def nested():
        pass

    cases = [
        ((lambda: None,), "cannot store a lambda"),
        ((nested,), "cannot store a closure or nested function"),
        ((Holder().method,), "bound methods cannot be stored"),
        ((side_effects.delete_row, object()), "arguments must be JSON-family data"),
        ((functools.partial(side_effects.delete_row),), "module-level function"),
    ]
    for args, message in cases:
        ex = bench.run(_refuses(*args), {})
        assert ex.status is Status.FAILED, args
        assert message in ex.error["message"], (message, ex.error["message"])
        assert bench.compensations(ex.id) == []


def _rollback_process(url, ex_id, to):
    return subprocess.Popen(wtb_cmd("rollback", ex_id, "--to", str(to), "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(url))


@pytest.mark.parametrize("killed", ["before", "after"])
def test_a_rollback_killed_midway_runs_each_undo_exactly_once(bench, durable_url, tmp_path,
                                                              killed):
    """The rollback process is SIGKILLed inside b's undo: before its delete commits, or after
    it committed but before WTB recorded it done. Run again, every row goes exactly once."""
    hold = tmp_path / "hold"
    hold.mkdir()
    control = {"hold_dir": str(hold), f"hold_{killed}": "b-2"}
    ex = bench.run(side_effects.ledger, ledger_state(durable_url, tmp_path, **control))
    start = bench.checkpoints(ex.id)[0].id

    first = _rollback_process(durable_url, ex.id, start)
    deadline = time.time() + 60
    while not (hold / f"{killed}-b-2.waiting").exists():
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline, "the rollback never reached b's undo"
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)

    midway = bench.get(ex.id)
    assert midway.status is Status.ROLLING_BACK
    states = {c["node"]: c["status"] for c in bench.compensations(ex.id)}
    assert states == {"a": "pending", "b": "started", "c": "done"}
    left = [f"{ex.id}-a-1"] + ([f"{ex.id}-b-2"] if killed == "before" else [])
    assert side_effects.rows(durable_url, "ledger", ex.id) == left

    (hold / f"{killed}-b-2.go").write_text("")
    second = _rollback_process(durable_url, ex.id, start)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out)["execution"]["status"] == "paused"
    assert side_effects.rows(durable_url, "ledger", ex.id) == []
    # c ran once; b was called again (same key, attempt 2); a once. Each took effect once.
    assert calls(tmp_path, ex.id) == ["c-3", "b-2", "b-2", "a-1"]
    assert len(side_effects.rows(durable_url, "undo_log", ex.id)) == 3
    undo = {c["node"]: c for c in bench.compensations(ex.id)}
    assert {n: (c["status"], c["attempts"]) for n, c in undo.items()} == {
        "a": ("done", 1), "b": ("done", 2), "c": ("done", 1)}
