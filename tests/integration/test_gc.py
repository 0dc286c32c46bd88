"""Garbage collection by reachability: what deleted executions alone used goes, everything a
remaining checkpoint reaches stays; retention never orphans a fork's origin; a blob a writer
is about to reuse is never collected under it."""

import json
import threading
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import select, update

from wtb_ray import END, Workflow
from wtb_ray.config import Settings
from wtb_ray.domain.errors import HasForks, InvalidTransition, NotFound
from wtb_ray.engine.bench import Bench
from wtb_ray.engine.lease import is_held
from wtb_ray.storage import gc
from wtb_ray.storage.schema import blobs
from wtb_ray.storage.store import Store
from wtb_ray.workspace import TreeReader, Workspace


def write_files(state, ctx):
    (ctx.workspace / "shared.txt").write_text("the same in every run\n" * 100)
    (ctx.workspace / "own.txt").write_text(f"only {state['name']} has this\n" * 100)
    return {"report": f"{state['name']} " * 20}


files_wf = Workflow("gcfiles", nodes={"w": write_files}, edges={"w": END}, entry="w")


@pytest.fixture
def bench(durable_url, tmp_path):
    b = Bench(Store.open(durable_url, auto_migrate=True), settings=Settings(home=tmp_path))
    yield b
    b.close()


def hashes(store):
    return set(store.run(lambda c: [r[0] for r in c.execute(select(blobs.c.hash))]))


def reach(bench, ex_id):
    """Every blob the execution's checkpoints reach (state values and workspace)."""
    found = set()
    reader = TreeReader(bench.store)
    for c in bench.checkpoints(ex_id):
        _, manifest, _ = bench.store.state_at(c.id)
        found.update(e for e in manifest.values() if not e.startswith("="))
        if c.workspace_tree:
            found |= reader.blobs(c.workspace_tree)
    return found


def test_gc_frees_what_only_deleted_executions_used_and_keeps_the_rest(bench, tmp_path):
    keep = bench.run(files_wf, {"name": "keep"}, workspace=True)
    drop = bench.run(files_wf, {"name": "drop"}, workspace=True)
    unique = reach(bench, drop.id) - reach(bench, keep.id)
    assert len(unique) >= 3  # its own file, its report value, its trees
    before = hashes(bench.store)
    assert unique <= before

    bench.delete(drop.id)
    assert not (tmp_path / "workspaces" / drop.id).exists()
    report = gc.collect(bench.store, grace_seconds=0)
    after = hashes(bench.store)
    assert after.isdisjoint(unique)
    assert reach(bench, keep.id) <= after
    # On PostgreSQL other tests share the database: count only what this test made.
    assert unique <= before - after and report.deleted >= len(unique)
    # every remaining checkpoint still reads back, state and files
    for c in bench.checkpoints(keep.id):
        bench.state(keep.id, c.id)
        Workspace(tmp_path / f"check-{c.id}", bench.store).restore(c.workspace_tree)
    assert (tmp_path / f"check-{keep.head_checkpoint_id}" / "own.txt").read_text().startswith(
        "only keep")


def test_unreachable_blobs_inside_the_grace_period_are_kept(bench):
    ex = bench.run(files_wf, {"name": "young"}, workspace=True)
    mine = reach(bench, ex.id)
    bench.delete(ex.id)
    gc.collect(bench.store, grace_seconds=3600)
    assert mine <= hashes(bench.store)


def test_a_writer_reusing_an_old_orphan_blob_refreshes_it(bench, tmp_path):
    ex = bench.run(files_wf, {"name": "orphan"}, workspace=True)
    mine = reach(bench, ex.id)
    bench.delete(ex.id)
    old = time.time() - 7200  # as if written two hours ago: past a one-hour grace period
    bench.store.run(lambda c: c.execute(update(blobs).where(blobs.c.hash.in_(mine))
                                        .values(created_at=old)), write=True)
    # A new run writes the same file and state value: it finds them stored, and refreshes
    # them, so a collection running before its checkpoint commits cannot take them.
    ws = tmp_path / "again"
    ws.mkdir()
    (ws / "own.txt").write_text("only orphan has this\n" * 100)
    Workspace(ws, bench.store).snapshot()
    again = bench.run(files_wf, {"name": "orphan"}, workspace=str(ws))
    stamps = dict(bench.store.run(lambda c: c.execute(
        select(blobs.c.hash, blobs.c.created_at).where(blobs.c.hash.in_(mine))).all()))
    shared = mine & reach(bench, again.id)
    assert shared and all(stamps[h] > old + 3600 for h in shared)
    gc.collect(bench.store, grace_seconds=3600)
    assert reach(bench, again.id) <= hashes(bench.store)


def test_retention_keeps_the_newest_and_every_origin_a_fork_needs(bench):
    runs = [bench.run(files_wf, {"name": f"r{i}"}, workspace=True) for i in range(4)]
    fork = bench.fork(runs[0].id, run=False)  # the oldest has a fork: it must stay
    ours = {r.id for r in runs} | {fork.id}
    # The newest two of the workflow are the fork (paused, never deleted) and r3.
    doomed, kept = gc.expired(bench.store, keep_last=2)
    assert sorted(d for d in doomed if d in ours) == sorted([runs[1].id, runs[2].id])
    assert runs[0].id in kept
    # Both conditions must hold: none of these finished more than an hour ago.
    doomed, _ = gc.expired(bench.store, keep_last=2, finished_before=time.time() - 3600)
    assert not ours & set(doomed)
    doomed, _ = gc.expired(bench.store, finished_before=time.time() + 1)
    assert ours & set(doomed) == {runs[1].id, runs[2].id, runs[3].id}


@contextmanager
def running(bench):
    """An execution (created pending) running in another thread, its node held until the
    block ends; then it completes."""
    release = threading.Event()

    def wait(state, ctx):
        assert release.wait(60), "never released"
        return {"waited": True}

    ex = bench.create(Workflow("gcheld", nodes={"w": wait}, edges={"w": END}, entry="w"), {})
    worker = threading.Thread(target=bench.start, args=(ex.id,))
    worker.start()
    try:
        deadline = time.time() + 30
        while bench.get(ex.id).status.value != "running" and time.time() < deadline:
            time.sleep(0.01)
        yield ex
    finally:
        release.set()
        worker.join(60)


def test_delete_refuses_a_running_execution_and_an_origin_with_forks(bench, tmp_path):
    """Neither is touched: the running one finishes, the origin and its fork stay whole."""
    with running(bench) as ex, pytest.raises(
            InvalidTransition, match=f"cannot delete execution {ex.id}: it is running .*stop "
                                     "it first"):
        bench.delete(ex.id)
    assert bench.get(ex.id).status.value == "completed"

    origin = bench.run(files_wf, {"name": "origin"}, workspace=True)
    fork = bench.fork(origin.id, run=False)
    with pytest.raises(HasForks, match=f"{origin.id} has forks .*\\({fork.id}\\): delete "
                                       "them first"):
        bench.delete(origin.id)
    assert (tmp_path / "workspaces" / origin.id / "own.txt").exists()
    assert bench.state(origin.id) == {"name": "origin", "report": "origin " * 20}
    bench.delete(fork.id)
    bench.delete(origin.id)
    with pytest.raises(NotFound):
        bench.get(origin.id)


def test_a_deletion_decides_again_on_what_changed_since_it_was_chosen(bench):
    """Retention and `delete` choose from an earlier read; the deleting transaction checks
    again: a run claimed since, a finished run rolled back since, an origin forked since,
    all stay whole (and the claimed run finishes)."""
    with running(bench) as pending:  # chosen while pending, then claimed
        assert gc.delete_executions(bench.store, [pending.id], may_go=lambda e: not is_held(e)
                                    ) == []
    assert bench.get(pending.id).status.value == "completed"
    assert bench.state(pending.id) == {"waited": True}

    finished = lambda ex: ex.status.value in gc.FINISHED  # noqa: E731 - retention's test
    rolled = bench.run(files_wf, {"name": "rolled"}, workspace=True)
    origin = bench.run(files_wf, {"name": "origin"}, workspace=True)
    gone = bench.run(files_wf, {"name": "gone"}, workspace=True)
    bench.rollback(rolled.id, rolled.head_checkpoint_id - 1)  # paused now: not finished
    fork = bench.fork(origin.id, run=False)
    origin_checkpoints = bench.checkpoints(origin.id)
    deleted = gc.delete_executions(bench.store, [rolled.id, origin.id, gone.id], may_go=finished)
    assert deleted == [gone.id]
    assert bench.get(rolled.id).status.value == "paused"
    assert bench.checkpoints(origin.id) == origin_checkpoints
    assert bench.state(fork.id) == bench.state(origin.id)
    # A fork that stays (paused: retention keeps it) keeps its origin; one deleted in the
    # same call does not: newest first, the fork goes in the group before its origin's ...
    assert gc.delete_executions(bench.store, [origin.id, fork.id], may_go=finished) == []
    padded = [origin.id, *(f"{origin.id}-{i:02}" for i in range(99)), fork.id]  # between
    assert gc.delete_executions(bench.store, padded) == [fork.id, origin.id]
    for ex_id in (origin.id, fork.id):
        with pytest.raises(NotFound):
            bench.get(ex_id)
    # ... and one a later group takes (its id sorting first: a clock behind) lets it go too.
    origin = bench.run(files_wf, {"name": "origin2"}, workspace=True)
    fork = bench.fork(origin.id, run=False)
    assert bench.store.run(gc._delete_rows, [origin.id], {fork.id}, lambda e: True,
                           write=True) == [origin.id]
    assert bench.store.run(gc._delete_rows, [fork.id], set(), lambda e: True,
                           write=True) == [fork.id]


def test_a_batch_is_kept_whole(bench):
    """Its cells are neither deleted one by one (its results count them; this used to fail
    on the results' foreign key) nor chosen by retention, which deletes the runs beside it."""
    from tests.integration.test_batch_local import matrix_spec
    from wtb_ray.batch.local import run_local
    from wtb_ray.batch.service import BatchService

    service = BatchService(bench)
    batch = run_local(service, service.submit(matrix_spec()).id)
    cells = [c["id"] for c in service.batches.cells(batch.id)]
    with pytest.raises(InvalidTransition, match=f"cannot delete execution {cells[0]}: it is "
                                                f"completed \\(it is a cell of batch {batch.id}"):
        bench.delete(cells[0])
    beside = Workflow("matrix", nodes={"w": write_files}, edges={"w": END}, entry="w")
    alone = bench.run(beside, {"name": "alone"})  # the batch's workflow's name, no batch
    newest = bench.run(beside, {"name": "newest"})
    doomed, _ = gc.expired(bench.store, keep_last=1)
    assert alone.id in doomed and newest.id not in doomed and not set(cells) & set(doomed)
    assert gc.delete_executions(bench.store, [alone.id],
                                may_go=lambda ex: ex.status.value in gc.FINISHED) == [alone.id]
    assert len(service.batches.results(batch.id)) == len(cells) == 30
    assert service.leaderboard(batch.id)


def test_wtb_gc_and_delete_from_the_command_line(durable_url, tmp_path):
    import subprocess

    from tests.conftest import subprocess_env, wtb_cmd

    env = subprocess_env(durable_url, WTB_HOME=str(tmp_path))
    bench = Bench(Store.open(durable_url, auto_migrate=True), settings=Settings(home=tmp_path))
    ex = bench.run(files_wf, {"name": "cli"}, workspace=True)
    mine = reach(bench, ex.id)
    result = subprocess.run(wtb_cmd("delete", ex.id, "--json"), capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    still, _ = gc.reachable(bench.store)  # other executions may share some of its blobs
    unique = mine - still
    assert unique
    result = subprocess.run(wtb_cmd("gc", "--grace", "0", "--json"), capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["deleted"] >= len(unique) and figures["bytes_freed"] > 0
    assert hashes(bench.store).isdisjoint(unique) and mine & still <= hashes(bench.store)
    assert not (tmp_path / "workspaces" / ex.id).exists()
    bench.close()


def test_an_upload_writes_again_a_blob_collected_right_after_it_looked(bench, tmp_path,
                                                                        monkeypatch):
    """gc deletes an old unreachable chunk between the uploader's look and its write."""
    from sqlalchemy import delete

    from wtb_ray.storage import blob_io
    from wtb_ray.workspace import uploader

    first = tmp_path / "first"
    first.mkdir()
    (first / "data.bin").write_bytes(b"collected in the window " * 20_000)  # > inline size
    Workspace(first, bench.store).snapshot()  # stored, and referenced by nothing
    real = blob_io.existing
    calls = []

    def look_then_collect(conn, hashes):
        found = real(conn, hashes)
        if not calls:  # the uploader's first look: gc strikes right after it
            calls.append(found)
            conn.execute(delete(blobs).where(blobs.c.hash.in_(found)))
            conn.commit()
        return found

    monkeypatch.setattr(uploader.blob_io, "existing", look_then_collect)
    monkeypatch.setattr(uploader, "INLINE_BYTES", 0)  # force the separate upload path
    second = tmp_path / "second"
    second.mkdir()
    (second / "data.bin").write_bytes((first / "data.bin").read_bytes())
    tree = Workspace(second, bench.store).snapshot()
    assert calls and calls[0]  # it did find the chunks stored, then they were deleted
    Workspace(tmp_path / "check", bench.store).restore(tree)
    assert (tmp_path / "check" / "data.bin").read_bytes() == (first / "data.bin").read_bytes()
