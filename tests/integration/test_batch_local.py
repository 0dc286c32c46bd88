"""Batches run in this process (no Ray), on SQLite and on PostgreSQL through PgBouncer."""

import json

import pytest

from wtb_ray.batch.local import run_local
from wtb_ray.batch.service import BatchService
from wtb_ray.batch.spec import parse_spec
from wtb_ray.domain.execution import Status
from wtb_ray.engine.group import claim_many

MATRIX = {"a": ["default", "add10", "add100"], "b": ["default", "triple"]}
ADD = {"default": 1, "add10": 10, "add100": 100}
MUL = {"default": 2, "triple": 3}


def matrix_spec(**extra):
    cases = [{"id": f"x{x}", "input": {"x": x},
              "expected": {"ys": [(x + a) * m for a in ADD.values() for m in MUL.values()]}}
             for x in range(1, 6)]
    return parse_spec({"workflow": "tests.workflows:matrix", "variants": MATRIX,
                       "cases": cases, "chunk_size": 4,
                       "evaluators": [{"type": "custom", "ref": "tests.workflows:y_matches"},
                                      {"type": "node_count"}], **extra})


def expected_y(combo: str, x: int) -> int:
    choice = json.loads(combo)
    return (x + ADD[choice["a"]]) * MUL[choice["b"]]


def check_matrix_results(service, batch_id):
    """Every cell completed once, its state right, its result persisted and passed."""
    cells = service.batches.cells(batch_id)
    assert len(cells) == 6 * 5 and {c["status"] for c in cells} == {"completed"}
    results = {r["execution_id"]: r for r in service.batches.results(batch_id)}
    assert set(results) == {c["id"] for c in cells}
    for cell in cells:
        x = int(cell["case"][1:])
        assert service.bench.state(cell["id"])["y"] == expected_y(cell["combo"], x)
        assert results[cell["id"]]["passed"] and results[cell["id"]]["node_count"] == 3
        completions = [e for e in service.bench.history(cell["id"])
                       if e.kind == "execution.completed"]
        assert len(completions) == 1
    board = service.leaderboard(batch_id)
    assert len(board) == 6 and all(r.pass_rate == 1.0 and not r.significant for r in board)


@pytest.fixture
def service(durable_url, bench_factory):
    return BatchService(bench_factory(durable_url))


def test_a_3x2_matrix_of_5_cases_completes_with_correct_results(service):
    batch = service.submit(matrix_spec())
    assert service.batches.get(batch.id).status == "pending"
    assert len(service.batches.cells(batch.id)) == 30  # every cell persisted before any ran
    seen = []
    batch = run_local(service, batch.id, on_progress=lambda b: seen.append(b.done))
    assert batch.status == "completed" and (batch.completed, batch.failed) == (30, 0)
    assert seen == sorted(seen) and seen[-1] == 30
    check_matrix_results(service, batch.id)
    assert [e["kind"] for e in service.bench.store.outbox_events(batch.id)] == [
        "batch.created", "batch.started", "batch.completed"]


def test_a_variant_that_always_raises_fails_after_max_attempts_and_the_rest_complete(service):
    spec = matrix_spec(variants={"a": ["default"], "b": ["default", "fails"]}, max_attempts=2)
    batch = run_local(service, service.submit(spec).id)
    assert batch.status == "completed" and (batch.completed, batch.failed) == (5, 5)
    for cell in service.batches.cells(batch.id):
        if '"fails"' in cell["combo"]:
            assert cell["status"] == "failed" and cell["attempts"] == 2
            assert cell["error"]["message"] == "this variant always fails"
        else:
            assert cell["status"] == "completed" and cell["attempts"] == 1
    board = {r.variants["b"]: r for r in service.leaderboard(batch.id)}
    assert board["fails"].pass_rate == 0 and board["fails"].failed == 5
    assert board["fails"].significant


def test_cancel_stops_scheduling_and_cancels_the_rest(service):
    batch = service.submit(matrix_spec(chunk_size=3))

    def cancel_after_first_chunk(b):
        if b.done and not b.cancel_requested:
            service.batches.request_cancel(b.id)

    batch = run_local(service, batch.id, on_progress=cancel_after_first_chunk)
    assert batch.status == "cancelled"
    statuses = [c["status"] for c in service.batches.cells(batch.id)]
    assert statuses.count("completed") == 3 and statuses.count("cancelled") == 27
    assert (batch.completed, batch.cancelled) == (3, 27)


def test_cells_left_running_by_a_dead_process_are_taken_over(service, bench_factory,
                                                             durable_url):
    batch = service.submit(matrix_spec())
    victim = service.batches.cells(batch.id)[0]["id"]
    other = bench_factory(durable_url)  # another "process" starts one cell and vanishes
    runs, _ = claim_many(other, [victim])
    assert runs and other.get(victim).status is Status.RUNNING
    batch = run_local(service, batch.id)  # this runner knows nothing else runs the batch
    assert batch.status == "completed"
    check_matrix_results(service, batch.id)
    assert "execution.recovered" in [e.kind for e in service.bench.history(victim)]


def test_cells_finished_but_never_scored_are_scored_before_the_batch_ends(service):
    from wtb_ray.engine.group import run_many

    batch = service.submit(matrix_spec())
    first = [c["id"] for c in service.batches.cells(batch.id)[:4]]
    run_many(service.bench, first)  # ran and committed, but whoever ran them died unscored
    assert service.batches.result_ids(batch.id) == set()
    batch = run_local(service, batch.id)
    check_matrix_results(service, batch.id)
