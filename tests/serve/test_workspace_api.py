"""Workspace files over real HTTP, on both backends: a run with a directory the server makes
(its files, diffs, rollback), hand edits to a paused run's directory, and a rollback whose
files cannot be restored."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests import side_effects


def test_a_workspace_run_over_http_lists_its_files_diffs_and_rolls_back(api):
    """A run with a workspace the server makes (a request never names a directory): its
    files at each checkpoint, a diff of two, and a rollback that puts the files back."""
    refused = api.client.post("/v1/executions", json={"workflow": "files", "workspace": "/etc"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "workspace"
    for body, field in (({"workspace_ignore": ["*.log"]}, "workspace_ignore"),
                        ({"workspace": True, "workspace_ignore": ["*.tmp", "!/"]},
                         "workspace_ignore[1]")):
        refused = api.client.post("/v1/executions", json={"workflow": "files", **body})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field
    started = api.client.post("/v1/executions", json={"workflow": "files", "workspace": True,
                                                       "workspace_ignore": ["*.log"]})
    assert started.status_code == 202, started.text
    assert started.json()["execution"]["workspace"]["ignore"] == ["*.log"]
    ex_id = started.json()["execution"]["id"]
    assert started.json()["links"]["files"].endswith(f"/v1/executions/{ex_id}/files")
    done = api.wait_for(f"/v1/executions/{ex_id}",
                        lambda b: b["execution"]["status"] in ("completed", "failed"))
    assert done["execution"]["status"] == "completed", done["execution"]
    ws = Path(done["execution"]["workspace"]["path"])
    assert ws == api.settings.home / "workspaces" / ex_id

    head = api.client.get(f"/v1/executions/{ex_id}/files")
    assert head.status_code == 200, head.text
    listed = {f["path"]: f for f in head.json()["files"]}
    assert head.json()["workspace"] == str(ws)
    assert sorted(listed) == ["data", "data/small.json", "empty", "latest", "new.txt",
                              "run.sh"]  # scratch.log ignored
    assert (ws / "scratch.log").exists()
    assert listed["latest"] == {"path": "latest", "type": "symlink", "target": "data/small.json"}
    assert listed["data/small.json"]["mode"] == "0o600"
    assert head.json()["next"] is None
    first = api.client.get(f"/v1/executions/{ex_id}/files", params={"limit": 4}).json()
    rest = httpx.get(first["next"], headers=api.client.headers).json()  # names the checkpoint
    assert f"at={head.json()['checkpoint_id']}" in first["next"] and rest["next"] is None
    assert first["files"] + rest["files"] == head.json()["files"]

    tree = api.client.get(f"/v1/executions/{ex_id}/checkpoints").json()["checkpoints"]
    after_create = next(c["id"] for c in tree if c["node"] == "create")
    at_create = api.client.get(f"/v1/executions/{ex_id}/files", params={"at": after_create})
    sizes = {f["path"]: f.get("size") for f in at_create.json()["files"]}
    assert sizes["data/big.bin"] == side_effects.BIG and sizes["notes.txt"] == 14
    assert "new.txt" not in sizes

    diff = api.client.get("/v1/diff", params={"a": after_create, "b": head.json()[
        "checkpoint_id"]})
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert body["state"]["added"] == {"modified": True, "deleted": True}
    added = {f["path"]: f["type"] for f in body["files"]["added"]}
    removed = {f["path"]: f["type"] for f in body["files"]["removed"]}
    # "empty": an empty directory then, a file of that name now; both show.
    assert added == {"new.txt": "file", "empty": "file"}
    assert removed == {"data/big.bin": "file", "notes.txt": "file", "empty": "dir"}
    changed = {f["path"]: f for f in body["files"]["changed"]}
    assert sorted(changed) == ["data/small.json", "latest"]
    assert changed["data/small.json"]["a"]["mode"] == "0o644"
    assert changed["latest"]["b"]["target"] == "data/small.json"

    rolled = api.client.post(f"/v1/executions/{ex_id}/rollback", json={"to": after_create})
    assert rolled.status_code == 200, rolled.text
    assert (ws / "notes.txt").read_text() == "line 1\nline 2\n"
    assert (ws / "data" / "big.bin").stat().st_size == side_effects.BIG
    assert not (ws / "new.txt").exists() and (ws / "empty").is_dir()

    # Bad input names what was wrong.
    other = api.client.post("/v1/executions", json={"workflow": "chain", "input": {"seed": 1}})
    other_id = other.json()["execution"]["id"]
    other_head = api.wait_for(f"/v1/executions/{other_id}",
                              lambda b: b["execution"]["status"] == "completed")
    foreign = api.client.get(f"/v1/executions/{ex_id}/files",
                             params={"at": other_head["execution"]["head_checkpoint_id"]})
    assert foreign.status_code == 422 and foreign.json()["error"]["field"] == "at"
    no_workspace = api.client.get(f"/v1/executions/{other_id}/files")
    assert no_workspace.status_code == 422
    assert "has no workspace" in no_workspace.json()["error"]["message"]
    assert api.client.get(f"/v1/executions/{ex_id}/files",
                          params={"at": 0}).json()["error"]["field"] == "at"
    # Without b: against the directory as it is now (rolled back to after_create's files).
    live = api.client.get("/v1/diff", params={"a": after_create}).json()
    assert (live["b"], live["state"], live["workspace"]) == (None, None, str(ws))
    assert live["files"] == {"added": [], "removed": [], "changed": []}
    (ws / "notes.txt").write_text("line 1\nline 2\nby hand\n")
    (changed_now,) = api.client.get("/v1/diff", params={"a": after_create}).json()["files"][
        "changed"]
    assert changed_now["diff"].endswith(" line 2\n+by hand\n")
    plain = api.client.get("/v1/diff", params={"a": other_head["execution"]["head_checkpoint_id"]})
    assert plain.status_code == 422 and plain.json()["error"]["field"] == "b"
    assert "has no workspace; give b" in plain.json()["error"]["message"]
    missing = api.client.get("/v1/diff", params={"a": after_create, "b": 2**62})
    assert missing.status_code == 404, missing.text


def test_hand_edits_to_a_paused_workspace_over_http(api):
    """A resume over them answers 409 naming them and leaves the run paused; sent again
    with "workspace_edits": "keep", the run goes on from them (a patch checkpoint)."""
    started = api.client.post("/v1/executions", json={"workflow": "files", "workspace": True,
                                                       "break_after": ["modify"]})
    assert started.status_code == 202, started.text
    ex_id = started.json()["execution"]["id"]
    paused = api.wait_for(f"/v1/executions/{ex_id}",
                          lambda b: b["execution"]["status"] == "paused")
    ws = Path(paused["execution"]["workspace"]["path"])
    assert paused["workspace_edits"] == []
    (ws / "extra.txt").write_text("added by hand\n")
    shown = api.client.get(f"/v1/executions/{ex_id}").json()
    assert shown["workspace_edits"] == ["added extra.txt"]  # as `wtb show --json` lists them

    refused = api.client.post(f"/v1/executions/{ex_id}/resume", json={})
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert "(added extra.txt)" in message and '"workspace_edits": "keep"' in message
    for path, body in (("resume", {"workspace_edits": "merge"}),
                       ("rollback", {"to": 1, "workspace_edits": "keep"})):
        bad = api.client.post(f"/v1/executions/{ex_id}/{path}", json=body)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "workspace_edits"
    assert api.client.get(f"/v1/executions/{ex_id}").json()["execution"]["status"] == "paused"

    kept = api.client.post(f"/v1/executions/{ex_id}/resume", json={"workspace_edits": "keep"})
    assert kept.status_code == 202, kept.text
    done = api.wait_for(f"/v1/executions/{ex_id}",
                        lambda b: b["execution"]["status"] in ("completed", "failed"))
    assert done["execution"]["status"] == "completed", done["execution"]
    tree = api.client.get(f"/v1/executions/{ex_id}/checkpoints").json()["checkpoints"]
    assert [c["kind"] for c in tree].count("patch") == 1
    files = api.client.get(f"/v1/executions/{ex_id}/files").json()["files"]
    assert "extra.txt" in {f["path"] for f in files}
    assert done["workspace_edits"] == []  # kept: recorded, no longer hand edits


def test_a_rollback_whose_files_cannot_be_restored_answers_json_naming_the_file(api, tmp_path):
    """An execution with a workspace (made here, in the API's database); its data/ directory
    made immutable (chattr +i), so the rollback cannot bring back data/big.bin: a JSON error
    naming the file, and the head has not moved."""
    import pytest

    from tests import side_effects
    from tests.integration.test_workspace_faults import immutable_supported
    from wtb_ray.engine.bench import Bench

    if not immutable_supported():
        pytest.skip("needs chattr and root to make a directory immutable")
    ws = tmp_path / "ws"
    with Bench.open(api.settings) as bench:
        ex = bench.run(side_effects.files, {}, workspace=str(ws))
        after_modify = bench.checkpoints(ex.id)[2]
    subprocess.run(["chattr", "+i", str(ws / "data")], check=True)
    try:
        refused = api.client.post(f"/v1/executions/{ex.id}/rollback",
                                  json={"to": after_modify.id})
    finally:
        subprocess.run(["chattr", "-i", str(ws / "data")], check=True)
    assert refused.status_code == 500
    assert refused.json()["error"] == {
        "status": 500, "field": None,
        "message": f"workspace file {str(ws / 'data' / 'big.bin')!r}: cannot be restored: "
                   "Operation not permitted"}
    shown = api.client.get(f"/v1/executions/{ex.id}").json()["execution"]
    assert shown["head_checkpoint_id"] == ex.head_checkpoint_id
    rolled = api.client.post(f"/v1/executions/{ex.id}/rollback", json={"to": after_modify.id})
    assert rolled.status_code == 200, rolled.text
    assert (ws / "data" / "big.bin").exists()
