"""The engine on the embedded SQLite store, in one process."""

import asyncio
import threading
import time

import pytest

from tests import workflows
from wtb_ray import END, InvalidInput, InvalidTransition, Node, Retry, Route, Status, Workflow
from wtb_ray.domain.errors import NotFound
from wtb_ray.storage.schema import FULL_MANIFEST_EVERY


def runs(log_path) -> list[str]:
    return log_path.read_text().split() if log_path.exists() else []


def test_run_checkpoints_every_boundary(bench, tmp_path):
    log = tmp_path / "log"
    ex = bench.run(workflows.chain, {"log_path": str(log)})
    assert ex.status is Status.COMPLETED and ex.step == 4
    cps = bench.checkpoints(ex.id)
    assert [(c.kind, c.node, c.next_node) for c in cps] == [
        ("start", None, "a"), ("node", "a", "b"), ("node", "b", "c"), ("node", "c", "d"),
        ("node", "d", None)]
    assert [c.parent_id for c in cps] == [None, *[c.id for c in cps[:-1]]]
    assert bench.state(ex.id) == {"log_path": str(log), "a": 1, "total": 10, "b": 3, "c": 10,
                                  "d": 25}
    assert bench.state(ex.id, cps[2].id) == {"log_path": str(log), "a": 1, "b": 3, "total": 3}
    assert runs(log) == ["a", "b", "c", "d"]
    boundaries = bench.boundaries(ex.id)
    assert [(b.node, b.entry_checkpoint_id, b.exit_checkpoint_id) for b in boundaries] == [
        (n, cps[i].id, cps[i + 1].id) for i, n in enumerate("abcd")]
    kinds = [e.kind for e in bench.history(ex.id)]
    assert kinds == ["execution.created", "execution.started", *["node.completed"] * 4,
                     "execution.completed"]
    outbox = bench.store.outbox_events(ex.id)
    assert [r["kind"] for r in outbox] == kinds and {r["status"] for r in outbox} == {"pending"}


def test_unchanged_values_are_stored_once_across_steps_and_executions(bench):
    big = {"doc": "lorem ipsum " * 500}
    ids = [bench.run(workflows.chain, big).id for _ in range(3)]
    counts = bench.store.table_counts()
    assert counts["checkpoints"] == 15
    # "doc" is one blob for all three runs; the small numbers nodes write are no longer than a
    # hash, so they live inline in the checkpoint manifests and take no blob at all.
    assert counts["blobs"] == 1
    assert all(bench.state(i)["doc"] == big["doc"] for i in ids)


def test_values_longer_than_a_hash_are_blobs_shared_across_keys(bench):
    wf = Workflow("twins", nodes={"copy": lambda s: {"b": s["a"], "short": "x" * 30}},
                  edges={"copy": END}, entry="copy")
    ex = bench.run(wf, {"a": "y" * 40})
    assert bench.store.table_counts()["blobs"] == 1  # "a" and "b" share one; "short" is inline
    assert bench.state(ex.id) == {"a": "y" * 40, "b": "y" * 40, "short": "x" * 30}


def test_long_runs_stay_readable_across_full_manifest_boundaries(bench):
    until = FULL_MANIFEST_EVERY * 2 + 5
    ex = bench.run(workflows.loop, {"until": until, "other": "kept"})
    assert ex.status is Status.COMPLETED and ex.step == until
    for c in bench.checkpoints(ex.id):
        assert bench.state(ex.id, c.id) == {"until": until, "other": "kept", **(
            {"n": c.step} if c.step else {})}


def test_async_nodes_and_usage_reports(bench):
    async def fetch(state, ctx):
        await asyncio.sleep(0.01)
        ctx.report(tokens=7, cost=0.5)
        ctx.report(tokens=3)
        return {"fetched": state["q"].upper()}

    wf = Workflow("async", nodes={"fetch": fetch}, edges={"fetch": END}, entry="fetch")
    ex = bench.run(wf, {"q": "hi"})
    assert bench.state(ex.id)["fetched"] == "HI"
    assert bench.boundaries(ex.id)[0].usage == {"tokens": 10, "cost": 0.5}


def test_retry_policy_retries_then_succeeds(bench):
    calls = []

    def flaky(state, ctx):
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt}")
        return {"ok": True}

    wf = Workflow("flaky", nodes={"n": Node(flaky, retry=Retry(attempts=3, backoff=0.001,
                                                                on=(ConnectionError,)))},
                  edges={"n": END}, entry="n")
    ex = bench.run(wf, {})
    assert ex.status is Status.COMPLETED and calls == [1, 2, 3]
    assert bench.boundaries(ex.id)[0].attempt == 3
    retried = [e for e in bench.history(ex.id) if e.kind == "node.retried"]
    assert [e.data["error"] for e in retried] == ["ConnectionError: try 1",
                                                  "ConnectionError: try 2"]


def test_exceptions_outside_the_retry_policy_fail_at_once(bench):
    calls = []

    def wrong(state, ctx):
        calls.append(1)
        raise KeyError("missing")

    wf = Workflow("w", nodes={"n": Node(wrong, retry=Retry(attempts=5, on=(ConnectionError,)))},
                  edges={"n": END}, entry="n")
    ex = bench.run(wf, {})
    assert ex.status is Status.FAILED and len(calls) == 1
    assert ex.error["type"] == "KeyError" and ex.error["node"] == "n"


@pytest.mark.parametrize("is_async", [False, True])
def test_timeouts_fail_the_node(bench, is_async):
    if is_async:
        async def slow(state, ctx):
            await asyncio.sleep(5)
    else:
        def slow(state, ctx):
            time.sleep(1)

    wf = Workflow("slow", nodes={"n": Node(slow, timeout=0.05)}, edges={"n": END}, entry="n")
    started = time.perf_counter()
    ex = bench.run(wf, {})
    assert time.perf_counter() - started < 0.9
    assert ex.status is Status.FAILED and ex.error["type"] == "NodeTimeout"
    assert "timed out after 0.05 s" in ex.error["message"]


def test_failure_is_recorded_and_resumable_with_a_fixed_variant(bench, tmp_path):
    log = tmp_path / "log"
    ex = bench.run(workflows.failing, {"log_path": str(log)})
    assert ex.status is Status.FAILED
    assert ex.error["node"] == "boom" and ex.error["attempts"] == 2
    assert "this node always fails" in ex.error["message"] and "Traceback" in ex.error["traceback"]
    failed = bench.boundaries(ex.id)[-1]
    assert (failed.node, failed.status, failed.exit_checkpoint_id) == ("boom", "failed", None)
    assert runs(log) == ["a", "boom", "boom"]
    again = bench.resume(ex.id, variants={"boom": "fixed"})
    assert again.status is Status.COMPLETED and again.error is None
    assert runs(log) == ["a", "boom", "boom", "boom", "z"]  # "a" did not run again
    assert bench.get(ex.id).variants == {"boom": "fixed"}


def test_unstorable_update_names_node_and_key(bench):
    wf = Workflow("bad", nodes={"emit": lambda s, c: {"fine": 1, "when": object()}},
                  edges={"emit": END}, entry="emit")
    ex = bench.run(wf, {})
    assert ex.status is Status.FAILED and ex.error["type"] == "SerializationError"
    assert "node 'emit' produced state key 'when'" in ex.error["message"]
    assert bench.state(ex.id) == {}  # nothing half-written


def test_node_returning_a_non_mapping_fails_naming_it(bench):
    wf = Workflow("bad", nodes={"n": lambda s, c: 42}, edges={"n": END}, entry="n")
    ex = bench.run(wf, {})
    assert ex.status is Status.FAILED and "node 'n' returned int" in ex.error["message"]


def test_router_error_fails_execution_naming_router_and_value(bench):
    def pick(state):
        return "nowhere"

    wf = Workflow("r", nodes={"a": lambda s: None, "b": lambda s: None},
                  edges={"a": Route(pick, ["b", END]), "b": END}, entry="a")
    ex = bench.run(wf, {})
    assert ex.status is Status.FAILED and ex.error["type"] == "RoutingError"
    assert "router 'test_router_error_fails_execution_naming_router_and_value.<locals>.pick'" \
        in ex.error["message"] and "'nowhere'" in ex.error["message"]


def test_max_steps_bounds_cycles(bench):
    ex = bench.run(workflows.loop, {"until": 1000})
    assert ex.status is Status.FAILED and ex.step == workflows.loop.max_steps
    assert ex.error["type"] == "MaxStepsExceeded"


def test_breakpoints_before_and_after(bench):
    ex = bench.run(workflows.chain, {}, break_before=["c"], break_after=["a"])
    assert ex.status is Status.PAUSED and ex.step == 1
    ex = bench.resume(ex.id)
    assert ex.status is Status.PAUSED and ex.step == 2
    assert bench.checkpoints(ex.id)[-1].next_node == "c"
    ex = bench.resume(ex.id)
    assert ex.status is Status.COMPLETED and ex.step == 4
    reasons = [e.data["reason"] for e in bench.history(ex.id) if e.kind == "execution.paused"]
    assert reasons == ["breakpoint after a", "breakpoint before c"]


def test_resume_with_patch_records_its_own_checkpoint_and_hot_swaps(bench):
    ex = bench.run(workflows.chain, {}, break_after=["a"])
    ex = bench.resume(ex.id, patch={"total": 1000, "note": "patched"},
                      variants={"b": "bonus"})
    cps = bench.checkpoints(ex.id)
    patch = cps[2]
    assert (patch.kind, patch.parent_id, patch.next_node) == ("patch", cps[1].id, "b")
    assert bench.state(ex.id, patch.id)["total"] == 1000
    assert bench.boundaries(ex.id)[1].variant == "bonus"
    assert bench.state(ex.id)["b"] == 1000 * 2 + 100 + 1


def test_rollback_is_non_destructive_and_restores_state(bench):
    ex = bench.run(workflows.chain, {"seed": 1})
    before = {c.id: bench.state(ex.id, c.id) for c in bench.checkpoints(ex.id)}
    target = bench.checkpoints(ex.id)[2]
    ex = bench.rollback(ex.id, target.id)
    assert ex.status is Status.PAUSED and ex.head_checkpoint_id == target.id
    assert bench.state(ex.id) == before[target.id]
    ex = bench.resume(ex.id, variants={"b": "bonus"})
    assert ex.status is Status.COMPLETED
    all_cps = bench.checkpoints(ex.id)
    assert len(all_cps) == 5 + 2  # the abandoned branch is still there
    for cid, state in before.items():  # and unchanged
        assert bench.state(ex.id, cid) == state


def test_rollback_to_a_node_name_goes_to_just_before_it_ran(bench):
    ex = bench.run(workflows.chain, {})
    ex = bench.rollback(ex.id, "c")
    head = bench.store.checkpoint(ex.head_checkpoint_id)
    assert head.next_node == "c" and head.node == "b"
    with pytest.raises(InvalidInput, match="has no node 'zz'"):
        bench.rollback(ex.id, "zz")
    with pytest.raises(NotFound, match="checkpoint before node"):
        bench.rollback(ex.id, "d")  # d never ran on the current branch


def test_fork_is_independent_of_its_origin(bench):
    origin = bench.run(workflows.chain, {"x": 1}, break_after=["b"])
    at = origin.head_checkpoint_id
    fork = bench.fork(origin.id, at, patch={"x": 2}, variants={"b": "bonus"}, run=False)
    assert fork.status is Status.PAUSED and fork.parent_execution_id == origin.id
    first = bench.checkpoints(fork.id)[0]
    assert (first.kind, first.parent_id) == ("fork", at)
    origin_before = bench.state(origin.id)
    fork = bench.resume(fork.id)
    assert bench.state(origin.id) == origin_before
    assert bench.get(origin.id).status is Status.PAUSED
    origin = bench.resume(origin.id, patch={"x": 3})
    assert bench.state(fork.id)["x"] == 2 and bench.state(origin.id)["x"] == 3
    assert bench.get(fork.id).variants == {"b": "bonus"}
    assert [c.execution_id for c in bench.checkpoints(origin.id)] == [origin.id] * 6  # + patch


def test_invalid_transitions_raise_and_write_nothing(bench):
    ex = bench.run(workflows.chain, {})
    counts = bench.store.table_counts()
    with pytest.raises(InvalidTransition, match="it finished"):
        bench.resume(ex.id)
    with pytest.raises(InvalidTransition, match="it is completed"):
        bench.pause(ex.id)
    stopped = bench.stop(bench.run(workflows.chain, {}, break_after=["a"]).id)
    assert stopped.status is Status.CANCELLED
    counts = bench.store.table_counts()
    for action in (lambda: bench.resume(stopped.id), lambda: bench.rollback(stopped.id, 1),
                   lambda: bench.stop(stopped.id)):
        with pytest.raises(InvalidTransition):
            action()
    with pytest.raises(InvalidInput, match="belongs to execution"):
        bench.rollback(ex.id, bench.checkpoints(stopped.id)[0].id)
    with pytest.raises(NotFound):
        bench.resume("no-such-id")
    with pytest.raises(InvalidInput, match="has no variant 'nope'"):
        bench.run(workflows.chain, {}, variants={"b": "nope"})
    with pytest.raises(InvalidInput, match="--patch must be a JSON object"):
        bench.fork(ex.id, patch=[1, 2])
    with pytest.raises(InvalidInput, match="belongs to execution"):
        bench.fork(ex.id, at=bench.checkpoints(stopped.id)[0].id)
    with pytest.raises(NotFound, match="checkpoint"):
        bench.fork(ex.id, at=10**6)
    with pytest.raises(NotFound, match="no-such-id"):
        bench.fork("no-such-id")
    with pytest.raises(InvalidInput, match="checkpoint id must be an integer"):
        bench.fork(ex.id, at="three")
    assert bench.store.table_counts() == counts


def test_pause_request_from_another_thread_is_honoured_at_the_next_boundary(bench, tmp_path):
    ready = threading.Event()
    release = threading.Event()

    def wait(state, ctx):
        ready.set()
        release.wait(10)
        return {"waited": True}

    wf = Workflow("p", nodes={"w": wait, "after": lambda s: {"after": True}},
                  edges={"w": "after", "after": END}, entry="w")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("ex", bench.run(wf, {})))
    worker.start()
    assert ready.wait(10)
    running = bench.store.executions(status="running")[0]
    requested = bench.pause(running.id)
    assert requested.control == "pause" and requested.status is Status.RUNNING
    release.set()
    worker.join(10)
    ex = result["ex"]
    assert ex.status is Status.PAUSED and ex.step == 1
    assert bench.state(ex.id) == {"waited": True}
    assert bench.resume(ex.id).status is Status.COMPLETED
