"""One storage contract, run against SQLite, PostgreSQL, and PostgreSQL through PgBouncer."""

import threading
import time

import pytest
from sqlalchemy import select, update

from tests import workflows
from wtb_ray import ConcurrencyConflict, Status
from wtb_ray.domain.errors import NotFound
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution
from wtb_ray.engine.state import TrackedState
from wtb_ray.storage import blob_io, codec, compensation_sql, queries
from wtb_ray.storage.schema import FULL_MANIFEST_EVERY, blobs
from wtb_ray.storage.store import Change, Store


@pytest.fixture
def store(db_url):
    s = Store.open(db_url, auto_migrate=True)
    yield s
    s.close()


def new_execution(store, values=None):
    ex = Execution(workflow_name="w", workflow_ref="tests.workflows:chain",
                   variants={"b": "bonus"}, break_before=["c"], labels={"case": "x"})
    state = TrackedState.empty()
    write = state.checkpoint(values or {"q": "hello"}, node="input", parent_id=None, step=0,
                             kind="start", next_node="a")
    committed = store.commit(Change(ex.id, [Event("execution.created", ex.id)],
                                    checkpoint=write, new_execution=ex))
    ex.head_checkpoint_id, ex.version = committed.checkpoint_id, committed.version
    return ex, state


def step(store, ex, state, update, *, owner=None, version=None, node="a"):
    write = state.checkpoint(update, node=node, parent_id=ex.head_checkpoint_id,
                             step=ex.step + 1, kind="node", next_node="b")
    return store.commit(Change(
        ex.id, [Event("node.completed", ex.id, node)], {"step": ex.step + 1},
        fence_owner=owner, fence_version=version, checkpoint=write,
        boundary={"step": ex.step + 1, "node": node, "variant": "default", "attempt": 1,
                  "entry_checkpoint_id": ex.head_checkpoint_id, "status": "completed",
                  "started_at": 1.0, "duration_ms": 0.5, "error": None, "usage": None}))


def test_execution_row_round_trips(store):
    ex, _ = new_execution(store)
    loaded = store.execution(ex.id)
    assert loaded.to_dict() == {**ex.to_dict(), "updated_at": loaded.updated_at}
    assert loaded.version == 1 and loaded.status is Status.PENDING


def test_one_commit_writes_checkpoint_boundary_audit_and_outbox(store):
    ex, state = new_execution(store)
    done = step(store, ex, state, {"a": [1, 2], "q": "hello"}, version=ex.version)
    assert done.version == 2 and done.control is None
    cps = store.checkpoints(ex.id)
    assert [c.parent_id for c in cps] == [None, cps[0].id]
    assert store.state_at(done.checkpoint_id)[0] == {"q": "hello", "a": [1, 2]}
    (boundary,) = store.boundaries(ex.id)
    assert (boundary.entry_checkpoint_id, boundary.exit_checkpoint_id) == (cps[0].id, cps[1].id)
    assert [e.checkpoint_id for e in store.history(ex.id)] == [cps[0].id, cps[1].id]
    assert [r["kind"] for r in store.outbox_events(ex.id)] == ["execution.created",
                                                               "node.completed"]
    assert store.execution(ex.id).head_checkpoint_id == done.checkpoint_id


def test_fences_reject_stale_writers_and_write_nothing(store):
    ex, state = new_execution(store)
    before = store.table_counts()
    with pytest.raises(ConcurrencyConflict, match="changed under this process"):
        step(store, ex, TrackedState(dict(state.values), dict(state.manifest), 0),
             {"a": 1}, version=ex.version + 5)
    with pytest.raises(ConcurrencyConflict):
        step(store, ex, TrackedState(dict(state.values), dict(state.manifest), 0),
             {"a": 1}, owner="someone-else")
    assert store.table_counts() == before
    assert step(store, ex, state, {"a": 1}, version=ex.version).version == 2  # still usable


def test_a_failing_statement_rolls_back_the_whole_change(store):
    ex, state = new_execution(store)
    before = store.table_counts()
    write = state.checkpoint({"new": "value " * 100}, node="a", parent_id=ex.head_checkpoint_id,
                             step=1, kind="node", next_node=None)
    broken = Change(ex.id, [Event("node.completed", ex.id)], checkpoint=write,
                    boundary={"step": 1})  # missing NOT NULL columns
    with pytest.raises(Exception):  # noqa: B017 - the driver's own integrity error
        store.commit(broken)
    assert store.table_counts() == before
    assert step(store, ex, state, {"a": 1}).checkpoint_id  # the connection recovered


def test_values_are_stored_once_across_executions(store):
    shared = {"doc": "the same large document " * 200}
    new_execution(store, shared)
    blobs = store.table_counts()["blobs"]
    second, _ = new_execution(store, shared)
    assert store.table_counts()["blobs"] == blobs
    assert store.state_at(second.head_checkpoint_id)[0] == shared


def test_manifest_chains_read_back_exactly_over_full_snapshots(store):
    ex, state = new_execution(store, {"fixed": "f"})
    expected = {ex.head_checkpoint_id: {"fixed": "f"}}
    current = {"fixed": "f"}
    for i in range(FULL_MANIFEST_EVERY * 2 + 3):
        update = {f"k{i % 5}": i, "last": i}
        current.update(update)
        done = step(store, ex, state, update)
        ex.head_checkpoint_id, ex.step = done.checkpoint_id, ex.step + 1
        expected[done.checkpoint_id] = dict(current)
    for checkpoint_id, values in expected.items():
        got, _, since_full = store.state_at(checkpoint_id)
        assert got == values and since_full < FULL_MANIFEST_EVERY


def test_control_requests_only_reach_matching_statuses(store):
    ex, _ = new_execution(store)
    event = Event("control.requested", ex.id, data={"action": "pause"})
    assert not store.request_control(ex.id, "pause", {"running"}, event)
    assert store.execution(ex.id).control is None
    assert store.request_control(ex.id, "pause", {"pending"}, event)
    assert store.execution(ex.id).control == "pause"
    assert store.execution(ex.id).version == ex.version  # a request does not fence writers


def test_interrupted_commit_is_recognised_by_its_event_id(store):
    ex, state = new_execution(store)
    write = state.checkpoint({"a": 1}, node="a", parent_id=ex.head_checkpoint_id, step=1,
                             kind="node", next_node=None)
    change = Change(ex.id, [Event("node.completed", ex.id)], checkpoint=write)
    assert store._committed_before(change) is None
    done = store.commit(change)
    again = store._committed_before(change)
    assert (again.checkpoint_id, again.version) == (done.checkpoint_id, done.version)


def test_two_processes_never_both_resume_one_execution(db_url, bench_factory, tmp_path):
    first, second = bench_factory(db_url), bench_factory(db_url)
    hold = tmp_path / "hold"
    hold.mkdir()
    ex = first.run(workflows.chain, {"hold_at": "b", "hold_dir": str(hold)}, break_after=["a"])
    barrier = threading.Barrier(2)
    outcomes = []

    def resume(bench):
        barrier.wait()
        try:
            outcomes.append(bench.resume(ex.id).status)
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=resume, args=(b,)) for b in (first, second)]
    for t in threads:
        t.start()
    while not (hold / "b.waiting").exists():
        threading.Event().wait(0.02)
    (hold / "b.go").write_text("")
    for t in threads:
        t.join(30)
    # The loser either lost the fence or already saw the winner running: refused either way.
    winner, loser = sorted(map(str, outcomes), key=lambda o: o != "completed")
    assert winner == "completed" and loser in {"ConcurrencyConflict", "InvalidTransition"}
    assert [b.node for b in first.boundaries(ex.id)] == ["a", "b", "c", "d"]


def test_group_commit_leaves_out_only_the_change_whose_fence_fails(store):
    runs = [new_execution(store) for _ in range(3)]
    before = store.table_counts()
    changes = []
    for i, (ex, state) in enumerate(runs):
        write = state.checkpoint({"n": i}, node="a", parent_id=ex.head_checkpoint_id, step=1,
                                 kind="node", next_node=None)
        stale = ex.version + 7 if i == 1 else ex.version
        changes.append(Change(ex.id, [Event("node.completed", ex.id, "a")], {"step": 1},
                              fence_version=stale, checkpoint=write))
    first, middle, last = store.commit_many(changes)
    assert isinstance(middle, ConcurrencyConflict)
    for outcome, (ex, _) in ((first, runs[0]), (last, runs[2])):
        assert store.execution(ex.id).head_checkpoint_id == outcome.checkpoint_id
        assert store.state_at(outcome.checkpoint_id)[0]["n"] in (0, 2)
        assert [e.checkpoint_id for e in outcome.events] == [outcome.checkpoint_id]
    assert store.execution(runs[1][0].id).head_checkpoint_id == runs[1][0].head_checkpoint_id
    after = store.table_counts()
    assert after["checkpoints"] == before["checkpoints"] + 2
    assert after["outbox"] == before["outbox"] + 2


def test_group_commit_of_new_executions(store):
    changes = []
    for i in range(5):
        ex = Execution(workflow_name="w", workflow_ref=None, batch_id="b1",
                       labels={"case": str(i)})
        write = TrackedState.empty().checkpoint({"i": i}, node="input", parent_id=None, step=0,
                                                kind="start", next_node="a")
        changes.append(Change(ex.id, [ex.event("execution.created")], checkpoint=write,
                              new_execution=ex))
    outcomes = store.commit_many(changes)
    for change, outcome in zip(changes, outcomes, strict=True):
        loaded = store.execution(change.execution_id)
        assert loaded.head_checkpoint_id == outcome.checkpoint_id and loaded.version == 1
        assert loaded.batch_id == "b1"
        assert store.state_at(outcome.checkpoint_id)[0] == {"i": int(loaded.labels["case"])}


def test_the_boundary_commit_carries_the_workspace_tree_and_undo_actions(store):
    ex, state = new_execution(store)
    write = state.checkpoint({"a": 1}, node="a", parent_id=ex.head_checkpoint_id, step=1,
                             kind="node", next_node=None)
    write.workspace_tree = "f" * 32
    undo = [{"entry_checkpoint_id": ex.head_checkpoint_id, "node": "a", "step": 1, "seq": i,
             "fn": "tests.side_effects:delete_row", "args": f'["row-{i}"]', "key": f"{ex.id}{i}"}
            for i in range(2)]
    stale = Change(ex.id, [Event("node.completed", ex.id)], checkpoint=write,
                   fence_version=ex.version + 9, compensations=undo)
    with pytest.raises(ConcurrencyConflict):
        store.commit(stale)
    assert store.run(compensation_sql.of_execution, ex.id) == []  # nothing of it landed
    done = store.commit(Change(ex.id, [Event("node.completed", ex.id)], checkpoint=write,
                               fence_version=ex.version, compensations=undo))
    assert store.checkpoint(done.checkpoint_id).workspace_tree == "f" * 32
    rows = store.run(compensation_sql.of_execution, ex.id)
    assert [(r["checkpoint_id"], r["seq"], r["args"], r["status"], r["attempts"])
            for r in rows] == [
        (done.checkpoint_id, 0, '["row-0"]', "pending", 0),
        (done.checkpoint_id, 1, '["row-1"]', "pending", 0)]


def test_undo_claims_need_the_rolling_back_lease(store):
    ex, _ = new_execution(store)
    undo = [{"entry_checkpoint_id": ex.head_checkpoint_id, "node": "a", "step": 1, "seq": 0,
             "fn": "m:f", "args": "[]", "key": f"{ex.id}k"}]
    store.commit(Change(ex.id, [Event("node.failed", ex.id)], fence_version=ex.version,
                        compensations=undo))
    (row,) = store.run(compensation_sql.of_execution, ex.id)
    assert row["checkpoint_id"] is None  # a failed run's undo has no exit checkpoint
    claim = lambda owner: store.run(  # noqa: E731
        compensation_sql.claim, row["id"], ex.id, owner, 1.0, write=True)
    assert claim("me") is None  # not rolling back, not leased
    store.commit(Change(ex.id, [Event("execution.rolling_back", ex.id)],
                        {"status": "rolling_back", "lease_owner": "me"}))
    assert claim("someone-else") is None
    assert claim("me") == 1 and claim("me") == 2  # a re-run claim counts the attempt
    store.run(compensation_sql.finish, row["id"], 2.0, write=True)
    assert claim("me") is None  # done is final
    assert store.run(compensation_sql.of_execution, ex.id, unfinished=True) == []


def test_blob_writes_refresh_only_stale_rows(store):
    value = {"doc": "a value long enough to be a blob " * 4}
    _, state = new_execution(store, value)
    (h,) = [e for e in state.manifest.values() if not codec.is_inline(e)]
    stamp = lambda: store.run(lambda c: c.execute(  # noqa: E731
        select(blobs.c.created_at).where(blobs.c.hash == h)).scalar_one())
    set_stamp = lambda t: store.run(lambda c: c.execute(  # noqa: E731
        update(blobs).where(blobs.c.hash == h).values(created_at=t)), write=True)
    recent = time.time() - 60
    set_stamp(recent)
    new_execution(store, value)  # the boundary upsert finds it fresh: left alone
    assert stamp() == recent
    set_stamp(1000.0)
    new_execution(store, value)  # stale: refreshed, so gc's grace period protects it again
    assert stamp() > recent
    set_stamp(1000.0)
    now = time.time()
    store.run(lambda c: blob_io.put(c, [(h, "j", 3, b"abc")], now), write=True)
    assert stamp() == now and store.run(blob_io.fetch, [h])[h] != b"abc"  # data untouched
    other = codec.digest(b"chunk")
    packed_codec, payload = codec.pack_chunk(b"chunk")
    store.run(lambda c: blob_io.put(c, [(other, packed_codec, 5, payload)], now), write=True)
    assert store.run(blob_io.existing, [h, other, "0" * 32]) == {h, other}
    assert store.run(blob_io.fetch, [other]) == {other: b"chunk"}


def test_chunks_committed_raw_are_compressed_once_the_boundary_has_committed(store):
    import os

    ex, state = new_execution(store)
    text = os.urandom(8).hex().encode() + b" loss 0.25 epoch 3 step 120 grad norm 1.5\n" * 4000
    noise = os.urandom(50_000)
    chunks = {codec.chunk_digest(d): d for d in (text, noise)}
    write = state.checkpoint({"a": 1}, node="a", parent_id=ex.head_checkpoint_id, step=1,
                             kind="node", next_node=None)
    write.blobs += [(h, codec.RAW_LATER, len(d), d) for h, d in chunks.items()]
    stale = Change(ex.id, [Event("node.completed", ex.id)], checkpoint=write,
                   fence_version=ex.version + 9)
    with pytest.raises(ConcurrencyConflict):
        store.commit(stale)
    assert store.packer.drain(10) and store.run(blob_io.existing, chunks) == set()
    store.commit(Change(ex.id, [Event("node.completed", ex.id)], checkpoint=write,
                        fence_version=ex.version))
    assert store.run(blob_io.fetch, chunks) == chunks  # readable at once, raw
    assert store.packer.drain(10)
    stored = dict(store.run(lambda c: c.execute(select(blobs.c.hash, blobs.c.codec).where(
        blobs.c.hash.in_(chunks))).all()))
    assert stored == {codec.chunk_digest(text): "s", codec.chunk_digest(noise): "r"}
    assert store.run(blob_io.fetch, chunks) == chunks


def test_a_commit_for_a_deleted_execution_is_not_found_and_writes_nothing(store):
    ex, state = new_execution(store)
    with store.write() as conn:  # gone under the runner (deleted by another process)
        for table, column in (("outbox", "aggregate_id"), ("audit_log", "execution_id"),
                              ("checkpoints", "execution_id"), ("executions", "id")):
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE {column} = '{ex.id}'")
    before = store.table_counts()
    with pytest.raises(NotFound, match=ex.id):
        step(store, ex, state, {"a": 1}, version=ex.version)
    assert store.table_counts() == before


def test_every_column_of_a_boundary_and_its_texts_round_trip(store):
    """Times to the last bit, booleans, NULLs, quotes, backslashes and non-ASCII; a NUL, which
    PostgreSQL's text cannot hold, does not fail the commit (it reads back as U+FFFD there)."""
    ex, state = new_execution(store)
    write = state.checkpoint({"a": "it's \\ \u00e9\u6f22 \U0001f600"}, node="n'1",
                             parent_id=ex.head_checkpoint_id, step=1, kind="node", next_node="b")
    error = "ValueError: bad\x00byte 'quoted' \\n \u00e9"
    committed = store.commit(Change(
        ex.id, [Event("node.failed", ex.id, "n'1", data={"error": error})],
        {"step": 1, "lease_expires_at": 1795330215.7638016},
        fence_version=ex.version, checkpoint=write,
        boundary={"step": 1, "node": "n'1", "variant": "v\u00e9", "attempt": 2,
                  "entry_checkpoint_id": ex.head_checkpoint_id, "status": "failed",
                  "started_at": 1795330185.763695, "duration_ms": 0.06676499992863683,
                  "error": error, "usage": None}))
    (boundary,) = store.boundaries(ex.id)
    nul = "\x00" if store.dialect == "sqlite" else "\ufffd"
    assert boundary.error == error.replace("\x00", nul)
    assert (boundary.node, boundary.variant, boundary.attempt) == ("n'1", "v\u00e9", 2)
    assert (boundary.started_at, boundary.duration_ms) == (1795330185.763695,
                                                           0.06676499992863683)
    loaded = store.execution(ex.id)
    assert loaded.lease_expires_at == 1795330215.7638016
    assert loaded.head_checkpoint_id == committed.checkpoint_id
    assert store.state_at(committed.checkpoint_id)[0]["a"] == "it's \\ \u00e9\u6f22 \U0001f600"
    assert store.history(ex.id)[-1].data == {"error": error}


def test_the_hot_read_of_a_checkpoint_and_its_state_matches_the_pooled_read(store):
    """``Store.checkpoint_with_state`` (raw driver connection) against the SQLAlchemy query,
    on every checkpoint of a chain that crosses full manifests, with values stored inline
    and as blobs; another execution's checkpoint; and ids that do not exist."""
    ex, state = new_execution(store, {"q": "hello", "doc": "x" * 100})
    for i in range(FULL_MANIFEST_EVERY + 3):
        done = step(store, ex, state, {"n": i, f"text{i % 3}": f"value {i} " * 20},
                    version=ex.version)
        ex.head_checkpoint_id, ex.step, ex.version = done.checkpoint_id, ex.step + 1, done.version
    other, _ = new_execution(store, {"other": "y" * 50})

    def both(execution_id, checkpoint_id):
        hot = store.checkpoint_with_state(execution_id, checkpoint_id)
        pooled = store.run(queries.checkpoint_with_state, execution_id, checkpoint_id)
        assert hot[0].to_dict() == pooled[0].to_dict()
        assert hot[1] == pooled[1] and hot[2] == pooled[2]
        return hot

    for ckpt in store.checkpoints(ex.id):
        _, got, (values, manifest, since_full) = both(ex.id, ckpt.id)
        assert got.id == ckpt.id and values == store.state_at(ckpt.id)[0]
        assert any(not codec.is_inline(e) for e in manifest.values())
        assert since_full < FULL_MANIFEST_EVERY
    head = both(ex.id, None)
    assert head[1].id == ex.head_checkpoint_id and head[2][0]["n"] == FULL_MANIFEST_EVERY + 2
    assert head[0].version == ex.version
    foreign = both(ex.id, other.head_checkpoint_id)
    assert foreign[1].execution_id == other.id and foreign[2] is None
    with pytest.raises(NotFound, match="execution"):
        store.checkpoint_with_state("no-such-execution", None)
    with pytest.raises(NotFound, match="checkpoint"):
        store.checkpoint_with_state(ex.id, 10**9)
    assert store.checkpoint_with_state(ex.id, None)[1].id == ex.head_checkpoint_id  # still fine
