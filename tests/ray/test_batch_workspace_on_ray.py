"""A batch whose cells have workspaces, on a local Ray instance: executors (other processes)
make each cell's directory from the store, retry a failed cell from its last checkpoint's
files, and record every checkpoint's files where any process can read them."""

from pathlib import Path

import pytest

from tests.integration.test_batch_workspace import files_in, notes_spec
from tests.ray.test_batches_on_ray import finish, submit


@pytest.mark.parametrize("durable_url", ["sqlite"], indirect=True)
def test_a_workspace_batch_runs_on_executors(ray_settings, service, tmp_path):
    orchestrator, batch_id = submit(ray_settings, notes_spec(tmp_path))
    status = finish(orchestrator, batch_id)
    assert status["batch"]["status"] == "completed" and status["batch"]["completed"] == 6
    for cell in service.batches.cells(batch_id):
        ex = service.bench.get(cell["id"])
        tag = "LOUD" if "loud" in cell["combo"] else "plain"
        notes = f"start {cell['case']} variant=default\nflaky {cell['case']}\nfinish {tag}\n"
        assert files_in(Path(ex.workspace["path"]))["notes.txt"] == notes
        checkpoints = service.bench.checkpoints(ex.id)
        after_start = next(c for c in checkpoints if c.node == "start")
        assert {f["path"] for f in service.bench.files(ex.id, after_start.id)} == {
            "notes.txt", "data", "data/input.json"}
        assert cell["attempts"] == (2 if cell["case"] == "c1" else 1)
