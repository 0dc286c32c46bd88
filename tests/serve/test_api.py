"""The HTTP API end to end, over real HTTP: batches with their event stream, execution
control, workspace files and diffs, authentication, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests import side_effects
from tests.conftest import ROOT
from wtb_ray.engine.bench import Bench

BATCH = {
    "workflow": "astro-qa", "name": "http-batch",
    "variants": {"answer": ["default", "lead"], "retrieve": ["default", "bm25"]},
    "cases": [{"id": "venus", "input": {"question": "Which planet is the hottest?"},
               "expected": {"answer_contains": "Venus"}},
              {"id": "olympus", "input": {"question": "What is the tallest volcano?"},
               "expected": {"answer_contains": "Olympus Mons"}},
              {"id": "halley", "input": {"question": "How often does Halley's Comet return?"},
               "expected": {"answer_contains": "76 years"}}],
    "evaluators": [{"type": "contains", "key": "answer", "expected": "answer_contains"},
                   {"type": "usage", "metric": "tokens"}],
}


def follow_events(api, params: dict[str, str], last_kind: str = "batch.completed",
                  timeout: float = 180, drop_after: int = 5) -> tuple[list[dict], int]:
    """Read /v1/events (filtered by ``params``) to the first event of ``last_kind``,
    reconnecting with Last-Event-ID whenever a stream ends: the server ends each after a few
    seconds here, and this client hangs up once by itself after ``drop_after`` events.
    Returns the events and the number of reconnects."""
    events, last, streams = [], None, 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        streams += 1
        with api.client.stream("GET", "/v1/events", params=params,
                               headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            block: dict[str, str] = {}
            for line in response.iter_lines():
                if line == "":
                    if "data" in block:
                        event = json.loads(block["data"])
                        assert int(block["id"]) == event["id"] and block["event"] == event["kind"]
                        events.append(event)
                        last = event["id"]
                        if event["kind"] == last_kind:
                            return events, streams - 1
                        if len(events) == drop_after:
                            break  # hang up mid-stream
                    block = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    block[key] = value
    raise AssertionError(f"no {last_kind} within {timeout} s ({len(events)} events)")


def test_the_orchestrator_is_up_once_the_application_is_ready(api):
    # The replica boots it while starting: the first health check must not wait for an
    # actor to start (seconds on a busy machine), nor find it missing.
    orchestrator = ray.get_actor(api.settings.orchestrator_name, namespace="wtb")
    assert ray.get(orchestrator.boot.remote(), timeout=5) is True


def test_healthz_needs_no_token(api):
    response = api.anonymous.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok", "orchestrator": "ok"}


def test_every_other_route_needs_the_bearer_token(api):
    spec = api.client.get("/openapi.json").json()
    checked = 0
    for path, operations in spec["paths"].items():
        if path == "/healthz":
            continue
        concrete = path.replace("{batch_id}", "b0").replace("{execution_id}", "e0")
        for method in operations:
            for client, headers in ((api.anonymous, {}),
                                    (api.anonymous, {"Authorization": "Bearer wrong"}),
                                    (api.anonymous, {"Authorization": "Basic " + "x" * 20})):
                response = client.request(method, concrete, headers=headers, json={})
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                checked += 1
    assert checked == 3 * 20  # 5 batch, 11 execution, diff, events, workflows, metrics


def test_batch_submitted_over_http_streams_to_completion_and_matches_the_cli(api):
    started = time.perf_counter()
    submitted = api.client.post("/v1/batches", json=BATCH)
    assert submitted.status_code == 202, submitted.text
    body = submitted.json()
    assert body["status"] == "pending" and body["total"] == 12
    assert body["links"]["events"].endswith(f"/v1/events?batch_id={body['id']}")
    assert time.perf_counter() - started < 60  # it did not wait for the batch to run

    events, reconnects = follow_events(api, {"batch_id": body["id"]})
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), "events repeated or out of order across reconnects"
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "batch.created" and kinds[-1] == "batch.completed"
    assert kinds.count("execution.completed") == 12
    assert kinds.count("node.completed") == 12 * 4
    assert reconnects >= 1  # the server ended streams; nothing was missed on reconnecting

    results = api.client.get(f"/v1/batches/{body['id']}/results", params={"limit": 500}).json()
    cli = subprocess.run([sys.executable, "-m", "wtb_ray.cli", "batch", "results", body["id"],
                          "--format", "json", "--db", api.settings.url],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    from_cli = json.loads(cli.stdout)
    assert results["leaderboard"] == from_cli["leaderboard"]
    assert results["cells"] == from_cli["cells"] and len(results["cells"]) == 12
    board = {tuple(sorted(r["variants"].items())): r for r in results["leaderboard"]}
    assert board[(("answer", "lead"), ("retrieve", "default"))]["pass_rate"] < 1.0

    status = api.client.get(f"/v1/batches/{body['id']}").json()
    assert status["batch"]["status"] == "completed" and status["batch"]["completed"] == 12
    page = api.client.get("/v1/batches", params={"limit": 1}).json()
    assert len(page["batches"]) == 1 and page["next"].endswith("offset=1")


def test_a_resume_refused_on_the_cluster_after_its_202_says_so_in_the_events(api):
    """The ingress answered 202, but by the time the cluster task ran the run could no longer
    be resumed (here it had completed: another client's resume won). The task's refusal is
    in the execution's event feed and history; the run itself is left as it was."""
    from actors.runs import drive

    started = api.client.post("/v1/executions", json={"workflow": "chain", "input": {"seed": 1}})
    assert started.status_code == 202, started.text
    ex_id = started.json()["execution"]["id"]
    done = api.wait_for(f"/v1/executions/{ex_id}",
                        lambda b: b["execution"]["status"] == "completed")

    answer = ray.get(drive.remote(api.settings.for_actors(), "resume", ex_id, {}), timeout=120)
    assert answer.startswith(f"refused: cannot resume execution {ex_id}: it is completed")

    events, _ = follow_events(api, {"execution_id": ex_id}, "execution.refused", timeout=60,
                              drop_after=100)
    kinds = [e["kind"] for e in events]
    assert kinds.index("execution.completed") < kinds.index("execution.refused")
    assert events[-1]["data"] == {"action": "resume", "reason": answer[len("refused: "):],
                                  "error": "InvalidTransition"}
    after = api.client.get(f"/v1/executions/{ex_id}").json()
    assert after["execution"] == done["execution"] and after["state"] == done["state"]
    with Bench.open(api.settings) as bench:
        assert bench.history(ex_id)[-1].kind == "execution.refused"


def test_pause_resume_rollback_and_fork_over_http(api):
    started = api.client.post("/v1/executions", json={
        "workflow": "chain", "input": {"seed": 1}, "break_after": ["b"]})
    assert started.status_code == 202, started.text
    ex_id = started.json()["execution"]["id"]
    paused = api.wait_for(f"/v1/executions/{ex_id}",
                          lambda b: b["execution"]["status"] == "paused")
    assert paused["execution"]["step"] == 2

    resumed = api.client.post(f"/v1/executions/{ex_id}/resume",
                              json={"variants": {"b": "bonus"}, "patch": {"seed": 2}})
    assert resumed.status_code == 202, resumed.text
    done = api.wait_for(f"/v1/executions/{ex_id}",
                        lambda b: b["execution"]["status"] == "completed")
    assert done["state"]["seed"] == 2 and done["execution"]["variants"] == {"b": "bonus"}

    tree = api.client.get(f"/v1/executions/{ex_id}/checkpoints").json()
    after_a = next(c for c in tree["checkpoints"] if c["node"] == "a")
    rolled = api.client.post(f"/v1/executions/{ex_id}/rollback", json={"to": after_a["id"]})
    assert rolled.status_code == 200 and rolled.json()["execution"]["status"] == "paused"
    assert rolled.json()["state"] == {"seed": 1, "a": 1, "total": 1}

    forked = api.client.post(f"/v1/executions/{ex_id}/fork",
                             json={"at": after_a["id"], "patch": {"total": 10},
                                   "variants": {"b": "default"}})  # origin now runs bonus
    assert forked.status_code == 202, forked.text
    fork_id = forked.json()["execution"]["id"]
    fork = api.wait_for(f"/v1/executions/{fork_id}",
                        lambda b: b["execution"]["status"] == "completed")
    assert fork["state"]["b"] == 10 * 2 + 1
    origin = api.client.get(f"/v1/executions/{ex_id}").json()
    assert origin["execution"]["status"] == "paused"
    assert origin["state"] == {"seed": 1, "a": 1, "total": 1}

    refused = api.client.post(f"/v1/executions/{fork_id}/pause")
    assert refused.status_code == 409 and "it is completed" in refused.json()["error"]["message"]
    again = api.client.post(f"/v1/executions/{fork_id}/resume", json={})
    assert again.status_code == 409
    assert api.client.get("/v1/executions/nope").status_code == 404

    listed = api.client.get("/v1/executions", params={"limit": 500}).json()
    ids = [e["id"] for e in listed["executions"]]
    assert ids.index(fork_id) < ids.index(ex_id)  # newest first
    paused_only = api.client.get("/v1/executions", params={"status": "paused"}).json()
    assert ex_id in [e["id"] for e in paused_only["executions"]]
    assert {e["status"] for e in paused_only["executions"]} == {"paused"}
    first = api.client.get("/v1/executions", params={"limit": 1}).json()
    assert first["executions"][0]["id"] == ids[0] and first["next"].endswith("offset=1")
    assert api.client.post("/v1/batches/nope/cancel").status_code == 404


def test_delete_over_http(api):
    """An origin with a fork is refused (409, naming the fork); the fork, then the origin,
    are deleted with the directory the server made for the origin's files."""
    started = api.client.post("/v1/executions", json={"workflow": "files", "workspace": True})
    assert started.status_code == 202, started.text
    ex_id = started.json()["execution"]["id"]
    done = api.wait_for(f"/v1/executions/{ex_id}",
                        lambda b: b["execution"]["status"] in ("completed", "failed"))
    assert done["execution"]["status"] == "completed", done["execution"]
    ws = Path(done["execution"]["workspace"]["path"])
    forked = api.client.post(f"/v1/executions/{ex_id}/fork", json={"run": False})
    assert forked.status_code == 202, forked.text
    fork_id = forked.json()["execution"]["id"]

    refused = api.client.delete(f"/v1/executions/{ex_id}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["message"] == (
        f"execution {ex_id} has forks that depend on its checkpoints ({fork_id}): "
        "delete them first")
    assert api.client.get(f"/v1/executions/{ex_id}").status_code == 200 and ws.is_dir()

    for gone in (fork_id, ex_id):
        deleted = api.client.delete(f"/v1/executions/{gone}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"deleted": gone, "workspace_not_removed": None}
        assert api.client.get(f"/v1/executions/{gone}").status_code == 404
    assert not ws.exists()
    again = api.client.delete(f"/v1/executions/{ex_id}")
    assert again.status_code == 404 and ex_id in again.json()["error"]["message"]

    spec = api.client.get("/openapi.json").json()
    operations = {op["operationId"] for item in spec["paths"].values() for op in item.values()}
    links = spec["paths"]["/v1/executions"]["post"]["responses"]["202"]["links"]
    assert {link["operationId"] for link in links.values()} <= operations
    assert "delete" in links


def test_a_workspace_run_over_http_lists_its_files_diffs_and_rolls_back(api):
    """A run with a workspace the server makes (a request never names a directory): its
    files at each checkpoint, a diff of two, and a rollback that puts the files back."""
    refused = api.client.post("/v1/executions", json={"workflow": "files", "workspace": "/etc"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "workspace"
    for body, field in (({"workspace_ignore": ["*.log"]}, "workspace_ignore"),
                        ({"workspace": True, "workspace_ignore": ["*.tmp", "!keep"]},
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


def test_metrics_parse_and_their_counters_move(api):
    def scrape() -> dict:
        text = api.client.get("/metrics").text
        return {f.name: f for f in text_string_to_metric_families(text)}

    def total(family, **labels) -> float:
        return sum(s.value for s in family.samples
                   if s.name.endswith(("_total", "_count")) or s.name == family.name
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    before = scrape()
    api.client.post("/v1/executions", json={"workflow": "chain", "input": {}})
    api.wait_for("/v1/batches", lambda b: True)
    time.sleep(0.5)
    after = api.wait_for("/v1/executions/none", lambda b: True) and scrape()
    deadline = time.time() + 60
    while (total(after["wtb_executions"], status="completed")
           <= total(before["wtb_executions"], status="completed")) and time.time() < deadline:
        time.sleep(0.5)
        after = scrape()
    assert total(after["wtb_http_requests"]) > total(before["wtb_http_requests"])
    assert total(after["wtb_executions"], status="completed") > total(
        before["wtb_executions"], status="completed")
    for name in ("wtb_batches", "wtb_outbox_pending", "wtb_outbox_lag_seconds",
                 "wtb_node_duration_seconds", "wtb_checkpoint_write_seconds"):
        assert name in after, name
    assert total(after["wtb_checkpoint_write_seconds"]) > 0


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
