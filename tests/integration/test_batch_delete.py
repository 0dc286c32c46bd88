"""Deleting a batch, on SQLite and on PostgreSQL through PgBouncer: a finished batch goes
whole (cells, their histories and workspaces, results, events, webhook, the batch) in one
transaction, and `wtb gc` then frees what only it used; a batch that has not finished, a
running cell or a fork of a cell refuses it and nothing is deleted; `wtb gc
--batches-before` deletes old batches so, keeping (and saying why) those it cannot."""

import json
import subprocess
import time

import pytest
from sqlalchemy import func, select

from tests.conftest import subprocess_env, wtb_cmd
from tests.integration.test_batch_workspace import notes_spec
from tests.integration.test_gc import files_wf, hashes, reach, running
from wtb_ray.batch.local import run_local
from wtb_ray.batch.service import BatchService
from wtb_ray.config import Settings
from wtb_ray.domain.errors import BatchNotDeletable, NotFound
from wtb_ray.storage import batches as batch_rows
from wtb_ray.storage import gc
from wtb_ray.storage.schema import (
    audit_log,
    batch_results,
    batch_webhooks,
    checkpoints,
    executions,
    outbox,
)


@pytest.fixture
def service(durable_url, bench_factory, tmp_path):
    return BatchService(bench_factory(durable_url, settings=Settings(home=tmp_path / "home")))


def finished_batch(service, markers, **extra):
    spec = notes_spec(markers, webhook={"url": "http://127.0.0.1:9/hook"}, **extra)
    batch = run_local(service, service.submit(spec).id)
    assert batch.status == "completed" and batch.completed == 6, batch
    return batch, [c["id"] for c in service.batches.cells(batch.id)]


def rows_of(store, batch_id, cells):
    """How many rows each table holds for the batch and its cells."""
    def count(conn, table, where):
        return conn.execute(select(func.count()).select_from(table).where(where)).scalar_one()

    return store.run(lambda c: {
        "executions": count(c, executions, executions.c.id.in_(cells)),
        "checkpoints": count(c, checkpoints, checkpoints.c.execution_id.in_(cells)),
        "audit": count(c, audit_log, audit_log.c.execution_id.in_(cells)),
        "results": count(c, batch_results, batch_results.c.batch_id == batch_id),
        "events": count(c, outbox, outbox.c.batch_id == batch_id),
        "webhook": count(c, batch_webhooks, batch_webhooks.c.batch_id == batch_id)})


def test_a_finished_batch_goes_whole_and_gc_frees_what_only_it_used(service, tmp_path):
    bench = service.bench
    beside = bench.run(files_wf, {"name": "beside"}, workspace=True)
    batch, cells = finished_batch(service, tmp_path)
    before = rows_of(bench.store, batch.id, cells)
    assert all(before.values()), before  # every kind of row was there to delete
    dirs = [bench.settings.home / "workspaces" / cell for cell in cells]
    assert all(d.is_dir() for d in dirs)
    theirs = set().union(*(reach(bench, cell) for cell in cells)) - reach(bench, beside.id)
    assert theirs and theirs <= hashes(bench.store)

    deleted, left = service.delete(batch.id)
    assert sorted(deleted) == sorted(cells) and left == []
    assert set(rows_of(bench.store, batch.id, cells).values()) == {0}
    assert not any(d.exists() for d in dirs)
    with pytest.raises(NotFound):
        service.batches.get(batch.id)
    with pytest.raises(NotFound):
        service.delete(batch.id)

    gc.collect(bench.store, grace_seconds=0)
    assert hashes(bench.store).isdisjoint(theirs)
    assert bench.get(beside.id).status.value == "completed"  # the run beside it is whole
    assert bench.state(beside.id)["report"].startswith("beside")


def test_a_batch_that_has_not_finished_is_refused_and_kept(service, tmp_path):
    batch = service.submit(notes_spec(tmp_path))
    cells = [c["id"] for c in service.batches.cells(batch.id)]
    with pytest.raises(BatchNotDeletable, match=f"cannot delete batch {batch.id}: it is pending "
                                                f"\\(cancel it with `wtb batch cancel"):
        service.delete(batch.id)
    assert len(service.batches.cells(batch.id)) == len(cells) == 6
    run_local(service, batch.id)  # still whole: it runs to the end
    assert service.batches.get(batch.id).completed == 6


def test_a_fork_of_a_cell_or_a_running_cell_refuses_it(service, tmp_path):
    bench = service.bench
    batch, cells = finished_batch(service, tmp_path)
    before = rows_of(bench.store, batch.id, cells)
    fork = bench.fork(cells[0], run=False)
    with pytest.raises(BatchNotDeletable, match=f"forks of its cells depend on their "
                                                f"checkpoints \\({fork.id}\\): delete them"):
        service.delete(batch.id)
    assert rows_of(bench.store, batch.id, cells) == before
    bench.delete(fork.id)

    # A cell running again (as a held run would after a rollback and a resume by hand).
    with running(bench) as held:
        bench.store.run(lambda c: c.execute(executions.update().where(
            executions.c.id == held.id).values(batch_id=batch.id)), write=True)
        with pytest.raises(BatchNotDeletable, match=f"cells of it are running \\({held.id}\\)"):
            service.delete(batch.id)
    assert rows_of(bench.store, batch.id, cells) == before
    deleted, _ = service.delete(batch.id)  # it completed: now the batch goes
    assert held.id in deleted and len(deleted) == len(cells) + 1


def test_a_deletion_that_fails_midway_deletes_nothing(service, tmp_path, monkeypatch):
    bench = service.bench
    batch, cells = finished_batch(service, tmp_path)
    before = rows_of(bench.store, batch.id, cells)
    real = batch_rows.delete_execution_rows

    def then_fail(conn, ids):
        real(conn, ids)  # the cells' rows are gone in this transaction...
        raise RuntimeError("the process dies here")

    monkeypatch.setattr(batch_rows, "delete_execution_rows", then_fail)
    with pytest.raises(RuntimeError):
        service.delete(batch.id)
    monkeypatch.undo()
    assert rows_of(bench.store, batch.id, cells) == before  # ... and back, all of them
    assert service.batches.get(batch.id).status == "completed"
    assert all((bench.settings.home / "workspaces" / cell).is_dir() for cell in cells)
    assert len(service.batches.results(batch.id)) == len(cells)


def test_wtb_batch_delete_from_the_command_line(service, durable_url, tmp_path):
    env = subprocess_env(durable_url, WTB_HOME=str(service.bench.settings.home))
    pending = service.submit(notes_spec(tmp_path))
    result = subprocess.run(wtb_cmd("batch", "delete", pending.id), capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert f"error: cannot delete batch {pending.id}: it is pending" in result.stderr

    batch, cells = finished_batch(service, tmp_path)
    result = subprocess.run(wtb_cmd("batch", "delete", batch.id, "--json"), capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"deleted": batch.id, "executions": len(cells),
                                         "workspace_not_removed": []}
    assert set(rows_of(service.bench.store, batch.id, cells).values()) == {0}
    result = subprocess.run(wtb_cmd("batch", "delete", batch.id), capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and f"batch '{batch.id}' not found" in result.stderr


def test_wtb_gc_batches_before_deletes_old_batches_whole_but_one_a_fork_needs(
        service, durable_url, tmp_path):
    bench = service.bench
    env = subprocess_env(durable_url, WTB_HOME=str(bench.settings.home))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, plain_cells = finished_batch(service, tmp_path / "a")
    needed, needed_cells = finished_batch(service, tmp_path / "b")
    fork = bench.fork(needed_cells[0], run=False)
    unfinished = service.submit(notes_spec(tmp_path))
    theirs = set().union(*(reach(bench, cell) for cell in plain_cells)) - set().union(
        *(reach(bench, ex) for ex in [*needed_cells, fork.id]))

    def gc_json(*args):
        result = subprocess.run(wtb_cmd("gc", "--grace", "0", "--json", *args),
                                capture_output=True, text=True, env=env,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86400))
    dry = gc_json("--batches-before", tomorrow, "--dry-run")
    mine = {plain.id, needed.id, unfinished.id}
    assert mine & set(dry["batches_deleted"]) == {plain.id}
    kept = [{"id": needed.id, "reason": f"cannot delete batch {needed.id}: forks of its "
                                        f"cells depend on their checkpoints ({fork.id}): "
                                        "delete them first"}]
    assert [k for k in dry["batches_kept"] if k["id"] in mine] == kept
    assert service.batches.get(plain.id).status == "completed"  # nothing deleted

    done = gc_json("--batches-before", tomorrow)
    assert mine & set(done["batches_deleted"]) == {plain.id}
    assert [k for k in done["batches_kept"] if k["id"] in mine] == kept
    assert set(rows_of(bench.store, plain.id, plain_cells).values()) == {0}
    assert all(rows_of(bench.store, needed.id, needed_cells).values())
    assert service.batches.get(unfinished.id).status == "pending"  # not finished: not chosen
    assert theirs and hashes(bench.store).isdisjoint(theirs)  # freed by the same run

    result = subprocess.run(wtb_cmd("gc", "--batches-before", "soon"), capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "--batches-before expects an ISO date or datetime" in result.stderr
