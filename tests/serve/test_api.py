"""The HTTP API end to end, over real HTTP: batches with their event stream, execution
control, authentication, metrics (workspace files: test_workspace_api.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import ray
from prometheus_client.parser import text_string_to_metric_families

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
    assert checked == 3 * 21  # 6 batch, 11 execution, diff, events, workflows, metrics


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


def test_delete_a_batch_over_http(api):
    """A finished batch with a fork of its cell is refused (409, naming the fork); once the
    fork is gone, the batch goes whole: its cell, its results, the batch; its event stream
    then answers 404."""
    one = {**BATCH, "name": "deleted-batch", "cases": BATCH["cases"][:1],
           "variants": {"answer": ["default"]}}
    submitted = api.client.post("/v1/batches", json=one)
    assert submitted.status_code == 202, submitted.text
    batch_id = submitted.json()["id"]
    done = api.wait_for(f"/v1/batches/{batch_id}", lambda b: b["batch"]["status"] not in (
        "pending", "running"))
    assert done["batch"]["status"] == "completed", done
    events, _ = follow_events(api, {"batch_id": batch_id})
    after = api.client.get("/v1/events", params={"batch_id": batch_id},
                           headers={"Last-Event-ID": str(events[-1]["id"])})
    assert after.status_code == 204 and after.content == b""  # nothing more will come
    cell = api.client.get("/v1/executions", params={"batch_id": batch_id}).json()
    (cell_id,) = [e["id"] for e in cell["executions"]]
    fork_id = api.client.post(f"/v1/executions/{cell_id}/fork",
                              json={"run": False}).json()["execution"]["id"]

    refused = api.client.delete(f"/v1/batches/{batch_id}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["message"] == (
        f"cannot delete batch {batch_id}: forks of its cells depend on their checkpoints "
        f"({fork_id}): delete them first")
    assert api.client.get(f"/v1/batches/{batch_id}/results").json()["cells"]

    assert api.client.delete(f"/v1/executions/{fork_id}").status_code == 200
    deleted = api.client.delete(f"/v1/batches/{batch_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"deleted": batch_id, "executions": 1, "workspace_not_removed": []}
    for gone in (f"/v1/batches/{batch_id}", f"/v1/executions/{cell_id}",
                 f"/v1/events?batch_id={batch_id}", f"/v1/events?execution_id={cell_id}"):
        assert api.client.get(gone).status_code == 404, gone
    assert api.client.delete(f"/v1/batches/{batch_id}").status_code == 404
    links = api.client.get("/openapi.json").json()["paths"]["/v1/batches"]["post"][
        "responses"]["202"]["links"]
    assert links["delete"]["operationId"] == "delete_v1_batches__batch_id__delete"


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
