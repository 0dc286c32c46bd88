"""Batches whose cells have workspaces, run in this process on SQLite and on PostgreSQL
through PgBouncer: each cell gets a directory of its own, and a cell retried after a failure
goes on from its last checkpoint's files, not from what the failed attempt left."""

from pathlib import Path

import pytest

from wtb_ray.batch.local import run_local
from wtb_ray.batch.service import BatchService
from wtb_ray.batch.spec import parse_spec
from wtb_ray.domain.errors import InvalidInput


def notes_spec(markers: Path, hold: str | None = None, **extra):
    """3 cases x 2 variants of the last node; case c1 fails once after writing, and case
    ``hold`` waits inside its first attempt (see tests/workspace_batch.py)."""
    cases = [{"id": f"c{i}", "input": {"case": f"c{i}", "markers": str(markers),
                                        "fail_once": i == 1, "hold": f"c{i}" == hold}}
             for i in range(3)]
    return parse_spec({"workflow": "tests.workspace_batch:workflow",
                       "variants": {"finish": ["default", "loud"]}, "cases": cases,
                       "chunk_size": 2, "workspace": True, "workspace_ignore": ["*.tmp"],
                       **extra})


@pytest.fixture
def service(durable_url, bench_factory):
    return BatchService(bench_factory(durable_url))


def files_in(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*"))
            if p.is_file() and ".wtb" not in p.relative_to(path).parts}


def test_each_cell_runs_in_its_own_workspace_and_a_retry_starts_from_its_files(service,
                                                                              tmp_path):
    batch = service.submit(notes_spec(tmp_path))
    batch = run_local(service, batch.id)
    assert batch.status == "completed" and batch.completed == 6
    cells = service.batches.cells(batch.id)
    paths = set()
    for cell in cells:
        ex = service.bench.get(cell["id"])
        path = Path(ex.workspace["path"])
        assert path == service.bench.settings.home / "workspaces" / ex.id
        assert ex.workspace["ignore"][-1] == "*.tmp"
        paths.add(path)
        case = cell["case"]
        tag = "LOUD" if "loud" in cell["combo"] else "plain"
        expected = f"start {case} variant=default\nflaky {case}\nfinish {tag}\n"
        assert files_in(path) == {"notes.txt": expected} | (
            {"stray.tmp": "left by a failed attempt\n"} if case == "c1" else {}), cell
        # What the checkpoints recorded: the ignored stray file never, the half line never.
        recorded = {f["path"] for f in service.bench.files(ex.id)}
        assert recorded == {"notes.txt", "data"}
        assert service.bench.state(ex.id)["lines"] == 3
        assert cell["attempts"] == (2 if case == "c1" else 1)
    assert len(paths) == 6  # one directory per cell


def test_without_a_workspace_the_file_writing_cells_fail_saying_why(service):
    spec = parse_spec({"workflow": "wtb_ray.examples.report:workflow", "max_attempts": 1,
                       "cases": [{"id": "moon", "input": {"topic": "moon"}}]})
    batch = run_local(service, service.submit(spec).id)
    assert batch.failed == 1
    cell = service.batches.cells(batch.id)[0]
    error = service.bench.get(cell["id"]).error["message"]
    assert "run it with a workspace" in error and "workspace: true in a batch" in error


@pytest.mark.parametrize(("extra", "message"), [
    ({"workspace": False}, "workspace_ignore: ignore patterns need a workspace"),
    ({"workspace_ignore": ["*.tmp", "!/"]}, "workspace_ignore[1]: .*matches nothing"),
])
def test_bad_workspace_options_are_refused_naming_the_field(tmp_path, extra, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        notes_spec(tmp_path, **extra)
