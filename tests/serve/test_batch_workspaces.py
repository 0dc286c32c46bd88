"""A batch whose cells have workspaces, submitted over real HTTP: the server makes a directory
for each cell (a request never names one) and each cell's files are listed over HTTP."""

from __future__ import annotations

from pathlib import Path


def test_a_batch_with_workspaces_gives_each_cell_its_files(api):
    submitted = api.client.post("/v1/batches", json={
        "workflow": "files", "cases": [{"id": "one"}, {"id": "two"}], "workspace": True,
        "workspace_ignore": ["*.log"]})
    assert submitted.status_code == 202, submitted.text
    batch_id = submitted.json()["id"]
    done = api.wait_for(f"/v1/batches/{batch_id}",
                        lambda b: b["batch"]["status"] in ("completed", "failed"))
    assert done["batch"]["status"] == "completed", done
    cells = api.client.get(f"/v1/batches/{batch_id}/results").json()["cells"]
    directories = set()
    for cell in cells:
        listed = api.client.get(f"/v1/executions/{cell['execution_id']}/files").json()
        assert sorted(f["path"] for f in listed["files"]) == [
            "data", "data/small.json", "empty", "latest", "new.txt", "run.sh"]
        ws = Path(listed["workspace"])
        assert ws == api.settings.home / "workspaces" / cell["execution_id"]
        assert (ws / "scratch.log").exists()  # there, and ignored
        directories.add(ws)
    assert len(directories) == 2
