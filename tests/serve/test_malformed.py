"""Malformed requests, over real HTTP: each is refused with a 4xx JSON error that names the
field at fault, and writes nothing."""

from __future__ import annotations

import pytest

CASE = {"id": "c1", "input": {"question": "Which planet is the hottest?"}}
GOOD = {"workflow": "astro-qa", "cases": [CASE]}


def batch(**changes):
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not ...}


# (name, method, path, body, expected status, expected field)
MALFORMED = [
    ("unknown top-level field", "POST", "/v1/batches", batch(priority=1), 422, "priority"),
    ("runtime_env (installs packages)", "POST", "/v1/batches",
     batch(runtime_env={"answer=lead": {"pip": ["requests"]}}), 422, "runtime_env"),
    ("workflow missing", "POST", "/v1/batches", batch(workflow=...), 422, "workflow"),
    ("workflow not a string", "POST", "/v1/batches", batch(workflow=7), 422, "workflow"),
    ("workflow names a module", "POST", "/v1/batches", batch(workflow="os:system"), 422,
     "workflow"),
    ("workflow not registered", "POST", "/v1/batches", batch(workflow="not-there"), 422,
     "workflow"),
    ("cases missing", "POST", "/v1/batches", batch(cases=...), 422, "cases"),
    ("cases empty", "POST", "/v1/batches", batch(cases=[]), 422, "cases"),
    ("cases over the server's limit", "POST", "/v1/batches",
     batch(cases=[{"id": f"c{i}"} for i in range(51)]), 422, "cases"),
    ("more executions than one request may create", "POST", "/v1/batches",
     batch(repeats=21), 422, "repeats"),
    ("case without id", "POST", "/v1/batches", batch(cases=[{"input": {}}]), 422,
     "cases[0].id"),
    ("case with an unknown field", "POST", "/v1/batches",
     batch(cases=[{**CASE, "weight": 2}]), 422, "cases[0].weight"),
    ("case input not an object", "POST", "/v1/batches",
     batch(cases=[CASE, {"id": "c2", "input": [1, 2]}]), 422, "cases[1].input"),
    ("case id too long", "POST", "/v1/batches", batch(cases=[{"id": "x" * 201}]), 422,
     "cases[0].id"),
    ("name too long", "POST", "/v1/batches", batch(name="n" * 201), 422, "name"),
    ("repeats zero", "POST", "/v1/batches", batch(repeats=0), 422, "repeats"),
    ("parallelism not a number", "POST", "/v1/batches", batch(parallelism="lots"), 422,
     "parallelism"),
    ("negative timeout", "POST", "/v1/batches", batch(timeout_s=-1), 422, "timeout_s"),
    ("batch workspace names a directory", "POST", "/v1/batches", batch(workspace="/etc"), 422,
     "workspace"),
    ("batch ignore patterns without a workspace", "POST", "/v1/batches",
     batch(workspace_ignore=["*.log"]), 422, "workspace_ignore"),
    ("batch ignore pattern that matches nothing", "POST", "/v1/batches",
     batch(workspace=True, workspace_ignore=["*.log", "!/"]), 422, "workspace_ignore[1]"),
    ("custom evaluator (names code)", "POST", "/v1/batches",
     batch(evaluators=[{"type": "custom", "ref": "os:system"}]), 422, "evaluators[0].type"),
    ("evaluator missing what it needs", "POST", "/v1/batches",
     batch(evaluators=[{"type": "contains"}]), 422, "evaluators[0]"),
    ("variant list empty", "POST", "/v1/batches", batch(variants={"answer": []}), 422,
     "variants.answer"),
    ("variant of an unknown node", "POST", "/v1/batches",
     batch(variants={"nosuchnode": ["default"]}), 422, "variants.nosuchnode"),
    ("unknown variant of a node", "POST", "/v1/batches",
     batch(variants={"answer": ["default", "nosuch"]}), 422, "variants.answer"),
    ("unknown variant in a combination", "POST", "/v1/batches",
     batch(combinations=[{"answer": "lead"}, {"answer": "nosuch"}]), 422,
     "combinations[1].answer"),
    ("both variants and combinations", "POST", "/v1/batches",
     batch(variants={"answer": ["default"]}, combinations=[{"answer": "lead"}]), 422,
     "combinations"),
    ("execution: input not an object", "POST", "/v1/executions",
     {"workflow": "chain", "input": "seed=1"}, 422, "input"),
    ("execution: unknown field", "POST", "/v1/executions",
     {"workflow": "chain", "module": "tests.workflows"}, 422, "module"),
    ("execution: breakpoint at an unknown node", "POST", "/v1/executions",
     {"workflow": "chain", "break_before": ["a", "zz"]}, 422, "break_before[1]"),
    ("execution: unknown variant", "POST", "/v1/executions",
     {"workflow": "chain", "variants": {"b": "nosuch"}}, 422, "variants.b"),
    ("execution: workflow not registered", "POST", "/v1/executions",
     {"workflow": "wtb_ray.examples.rag"}, 422, "workflow"),
    ("rollback: no target", "POST", "/v1/executions/{ex}/rollback", {}, 422, "to"),
    ("rollback: not an id or a node name", "POST", "/v1/executions/{ex}/rollback",
     {"to": "a b"}, 422, "to"),
    ("rollback: checkpoint id zero", "POST", "/v1/executions/{ex}/rollback", {"to": 0}, 422,
     "to"),
    ("rollback: a node that never ran", "POST", "/v1/executions/{ex}/rollback",
     {"to": "zz"}, 422, "to"),
    ("fork: at not an id", "POST", "/v1/executions/{ex}/fork", {"at": "x"}, 422, "at"),
    ("fork: at beyond a BIGINT", "POST", "/v1/executions/{ex}/fork",
     {"at": 561004710840193056768}, 422, "at"),
    ("rollback: checkpoint id beyond a BIGINT", "POST", "/v1/executions/{ex}/rollback",
     {"to": 2**63}, 422, "to"),
    ("events: last_event_id beyond a BIGINT", "GET", f"/v1/events?last_event_id={2**63}", None,
     422, "last_event_id"),
    ("fork: unknown variant", "POST", "/v1/executions/{ex}/fork",
     {"variants": {"c": "nosuch"}}, 422, "variants.c"),
    ("fork: patch not an object", "POST", "/v1/executions/{ex}/fork", {"patch": [1]}, 422,
     "patch"),
    ("resume: unknown variant", "POST", "/v1/executions/{ex}/resume",
     {"variants": {"b": "nosuch"}}, 422, "variants.b"),
    ("resume: unknown field", "POST", "/v1/executions/{ex}/resume", {"state": {}}, 422,
     "state"),
    ("batch name with a NUL character", "POST", "/v1/batches", batch(name="a\x00b"), 422,
     "name"),
    ("case id with a NUL character", "POST", "/v1/batches",
     batch(cases=[{**CASE, "id": "c\x001"}]), 422, "cases[0].id"),
    ("regex evaluator with an invalid pattern", "POST", "/v1/batches",
     batch(evaluators=[{"type": "regex", "key": "answer", "pattern": "(("}]), 422,
     "evaluators[0].pattern"),
    ("execution: label with a NUL character", "POST", "/v1/executions",
     {"workflow": "chain", "labels": {"team": "a\x00"}}, 422, "labels.team"),
    ("execution id with odd characters", "GET", "/v1/executions/a%00b", None, 422,
     "execution_id"),
    ("batch id with odd characters", "GET", "/v1/batches/a%20b/results", None, 422,
     "batch_id"),
    ("list: status not a batch status", "GET", "/v1/batches?status=done", None, 422,
     "status"),
    ("list: limit zero", "GET", "/v1/batches?limit=0", None, 422, "limit"),
    ("list: offset negative", "GET", "/v1/batches?offset=-1", None, 422, "offset"),
    ("executions: status not an execution status", "GET", "/v1/executions?status=done", None,
     422, "status"),
    ("executions: limit over the maximum", "GET", "/v1/executions?limit=501", None, 422,
     "limit"),
    ("executions: batch id with a NUL character", "GET", "/v1/executions?batch_id=a%00b",
     None, 422, "batch_id"),
    ("events: batch id with odd characters", "GET", "/v1/events?batch_id=../x", None, 422,
     "batch_id"),
]


@pytest.fixture(scope="module")
def paused_execution(api):
    """An execution paused after its first node: a real target for the control routes."""
    body = api.client.post("/v1/executions", json={
        "workflow": "chain", "input": {"seed": 1}, "break_after": ["a"]}).json()
    ex_id = body["execution"]["id"]
    api.wait_for(f"/v1/executions/{ex_id}", lambda b: b["execution"]["status"] == "paused")
    return ex_id


@pytest.mark.parametrize(("name", "method", "path", "body", "status", "field"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_refused_naming_the_field(api, paused_execution, name, method,
                                                       path, body, status, field):
    before = api.client.get("/v1/batches", params={"limit": 500}).json()["batches"]
    response = api.client.request(method, path.format(ex=paused_execution), json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["field"] == field, error
    assert error["message"]
    after = api.client.get("/v1/batches", params={"limit": 500}).json()["batches"]
    assert after == before  # nothing was written
    assert api.client.get(f"/v1/executions/{paused_execution}").json()[
        "execution"]["status"] == "paused"


@pytest.mark.parametrize("value", ["abc", str(2**63)])
def test_a_last_event_id_header_that_is_not_an_event_id_is_refused(api, value):
    response = api.client.get("/v1/events", headers={"Last-Event-ID": value})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "Last-Event-ID"


def test_a_body_that_is_not_json_is_a_400(api):
    response = api.client.post("/v1/batches", content=b'{"workflow": "astro-qa", "cases": [',
                               headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "body"


def test_a_body_that_is_a_list_is_refused(api):
    response = api.client.post("/v1/batches", json=[GOOD])
    assert response.status_code == 422 and response.json()["error"]["field"] == "body"


def test_an_oversized_body_is_a_413_before_it_is_parsed(api):
    big = batch(cases=[{"id": "c1", "input": {"text": "x" * 300_000}}])
    response = api.client.post("/v1/batches", json=big)
    assert response.status_code == 413 and response.json()["error"]["field"] == "body"

    def chunks():  # no Content-Length: the cap holds while the body streams in
        yield b'{"workflow": "astro-qa", "cases": [{"id": "c1", "input": {"t": "'
        for _ in range(30):
            yield b"y" * 10_000
        yield b'"}}]}'

    streamed = api.client.post("/v1/batches", content=chunks(),
                               headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_unknown_ids_are_404_and_forbidden_transitions_409(api, paused_execution):
    assert api.client.get("/v1/batches/nope").status_code == 404
    assert api.client.get("/v1/batches/nope/results").status_code == 404
    assert api.client.get("/v1/executions/nope/checkpoints").status_code == 404
    assert api.client.post("/v1/executions/nope/resume", json={}).status_code == 404
    stopped = api.client.post("/v1/executions", json={"workflow": "chain", "break_after": ["a"]})
    ex_id = stopped.json()["execution"]["id"]
    api.wait_for(f"/v1/executions/{ex_id}", lambda b: b["execution"]["status"] == "paused")
    assert api.client.post(f"/v1/executions/{ex_id}/stop").status_code == 200
    refused = api.client.post(f"/v1/executions/{ex_id}/resume", json={})
    assert refused.status_code == 409, refused.text
    assert "stopped" in refused.json()["error"]["message"]
