"""`wtb batch ...` and `wtb demo` as a user runs them: separate processes, each `run` starting
its own local Ray instance."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from wtb_ray.storage.store import Store


def wtb(*args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "wtb_ray.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def test_batch_run_then_results_in_every_format(sqlite_url):
    run = wtb("batch", "run", "tests/data/matrix_batch.yaml", "--db", sqlite_url, "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    final = json.loads(run.stdout)
    batch_id = final["batch"]["id"]
    assert final["batch"]["status"] == "completed" and len(final["leaderboard"]) == 6

    as_csv = wtb("batch", "results", batch_id, "--format", "csv", "--db", sqlite_url)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 30 and {r["status"] for r in rows} == {"completed"}
    assert {r["passed"] for r in rows} == {"True"} and "y_matches.y" in rows[0]

    as_json = json.loads(wtb("batch", "results", batch_id, "--format", "json", "--db",
                             sqlite_url).stdout)
    assert len(as_json["cells"]) == 30 and as_json["leaderboard"] == final["leaderboard"]
    table = wtb("batch", "results", batch_id, "--db", sqlite_url).stdout
    assert "leaderboard" in table and "a=add100" in table

    status = json.loads(wtb("batch", "status", batch_id, "--db", sqlite_url, "--json").stdout)
    assert sum(c["completed"] for c in status["combinations"].values()) == 30


@pytest.mark.parametrize("args, message", [
    (["batch", "run", "no-such-spec.yaml"], "cannot read batch spec 'no-such-spec.yaml'"),
    (["batch", "results", "nope"], "batch 'nope' not found"),
    (["batch", "status", "nope"], "batch 'nope' not found"),
    (["batch", "cancel", "nope"], "batch 'nope' not found"),
    (["batch", "results", "x", "--format", "xml"], "--format must be table, json or csv"),
])
def test_batch_commands_refuse_bad_input_in_one_line(sqlite_url, args, message):
    result = wtb(*args, "--db", sqlite_url)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"] or message in (
        result.stderr.strip())


def test_an_invalid_spec_fails_before_anything_runs(sqlite_url, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("workflow: tests.workflows:matrix\nvariants: {a: [default, nope]}\n"
                    "cases: [{id: c, input: {x: 1}}]\n")
    result = wtb("batch", "run", str(spec), "--db", sqlite_url)
    assert result.returncode == 2
    assert "batch spec: variants: node 'a' of workflow 'matrix' has no variant 'nope'" in (
        result.stderr)
    assert "Ray" not in result.stderr  # refused before a Ray instance was started
    store = Store.open(sqlite_url)
    assert store.table_counts()["executions"] == 0
    store.close()


def test_demo_runs_the_bundled_batch_on_ray(tmp_path):
    result = wtb("demo", "--json", env_extra={"WTB_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads(result.stdout)
    assert final["batch"]["status"] == "completed" and final["batch"]["total"] >= 40
    assert len(final["leaderboard"]) >= 4 and (tmp_path / "wtb.db").exists()
    assert any(r["significant"] for r in final["leaderboard"])
