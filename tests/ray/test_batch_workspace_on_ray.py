"""A batch whose cells have workspaces, on a local Ray instance: executors (other processes)
make each cell's directory from the store, retry a failed cell from its last checkpoint's
files, and record every checkpoint's files where any process can read them."""

from pathlib import Path

import pytest

from tests.integration.test_batch_workspace import files_in, notes_spec
from tests.ray.conftest import wait_for
from tests.ray.test_batches_on_ray import executors, finish, kill_all_and_wait, submit


def check_cells(service, batch_id):
    """Every cell's directory holds the notes of its three nodes, each once, and nothing of
    a failed or killed attempt but the ignored stray file; its checkpoints recorded them."""
    for cell in service.batches.cells(batch_id):
        ex = service.bench.get(cell["id"])
        tag = "LOUD" if "loud" in cell["combo"] else "plain"
        notes = f"start {cell['case']} variant=default\nflaky {cell['case']}\nfinish {tag}\n"
        assert files_in(Path(ex.workspace["path"]))["notes.txt"] == notes
        checkpoints = service.bench.checkpoints(ex.id)
        after_start = next(c for c in checkpoints if c.node == "start")
        assert {f["path"] for f in service.bench.files(ex.id, after_start.id)} == {
            "notes.txt", "data", "data/input.json"}


@pytest.mark.parametrize("durable_url", ["sqlite"], indirect=True)
def test_a_workspace_batch_runs_on_executors(ray_settings, service, tmp_path):
    orchestrator, batch_id = submit(ray_settings, notes_spec(tmp_path))
    status = finish(orchestrator, batch_id)
    assert status["batch"]["status"] == "completed" and status["batch"]["completed"] == 6
    check_cells(service, batch_id)
    attempts = {c["case"]: c["attempts"] for c in service.batches.cells(batch_id)}
    assert attempts == {"c0": 1, "c1": 2, "c2": 1}


def test_executors_killed_inside_workspace_cells_lose_nothing(ray_settings, service,
                                                               tmp_path):
    """Both cells of case c2 write a file and half a line, then wait; every executor is
    killed. The cells recover elsewhere from their last checkpoint's files."""
    orchestrator, batch_id = submit(ray_settings, notes_spec(tmp_path, hold="c2"))
    wait_for(tmp_path / "held.waiting")
    kill_all_and_wait(executors(orchestrator, batch_id))
    (tmp_path / "held.go").write_text("")
    status = finish(orchestrator, batch_id)
    assert status["batch"]["status"] == "completed" and status["batch"]["completed"] == 6
    check_cells(service, batch_id)
    held = [c["id"] for c in service.batches.cells(batch_id) if c["case"] == "c2"]
    recovered = [e.kind for e in service.bench.history(held[0]) + service.bench.history(
        held[1])].count("execution.recovered")
    assert recovered >= 1  # at least one was inside its node when its executor died
