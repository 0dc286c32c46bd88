"""The benchmark scripts run, on tiny inputs, and end with one JSON object of their figures.

Figures are never asserted here (shared machines are noisy); bench/ prints them for people.
The scripts are independent (each makes its own databases, PgBouncer, Ray instance and
ports) and mostly wait on their services: they all start at once, which took the module
from ~2 minutes to about the slowest one's time.
"""

import contextlib
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPTS = {
    "checkpoint_overhead.py": (["--runs", "3", "--rounds", "1"], {
        "wtb_sqlite_ms_per_run", "langgraph_sqlite_ms_per_run", "ratio_sqlite",
        "wtb_pgbouncer_ms_per_run", "langgraph_pgbouncer_ms_per_run", "ratio_pgbouncer"}),
    "storage_growth.py": (["--steps", "10"], {
        "wtb_bytes", "langgraph_bytes", "ideal_bytes", "wtb_ratio_to_ideal"}),
    "fork_cost.py": (["--sizes-mb", "1", "--steps", "1", "--rounds", "1"], {
        "ratio_checkpoint_time_1mb", "ratio_fork_bytes_1mb", "ratio_fork_restore_time_1mb",
        "create_us_1mb"}),
    "batch_throughput.py": (["--executions", "20", "--tune-trials", "2",
                             "--cpu-executions", "4", "--chunk-size", "5"], {
        "wtb_exec_per_s", "raw_pool_items_per_s", "ratio_vs_raw_pool", "tune_trials_per_s",
        "ratio_vs_tune", "cpu_bound_speedup_2_vs_1"}),
    "serve_latency.py": (["--rate", "20", "--seconds", "1", "--warmup", "2"], {
        "submit_p50_ms", "submit_p99_ms", "status_p50_ms", "status_p99_ms", "noop_p50_ms",
        "ratio_status_vs_noop"}),
    "outbox_relay.py": (["--events", "200", "--aggregates", "10", "--seconds", "1"], {
        "sqlite_events_per_s", "pgbouncer_events_per_s", "sqlite_p95_lag_s",
        "pgbouncer_p95_lag_s"}),
}


@pytest.fixture(scope="module")
def started(request, postgres_ready, tmp_path_factory):
    """Every script this session selected (``-k``), started; each test waits for its own."""
    selected = {item.callspec.params["script"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    out = tmp_path_factory.mktemp("bench-scripts")
    runs = {}
    with contextlib.ExitStack() as files:
        for script, (args, _) in SCRIPTS.items():
            if script not in selected:
                continue
            stdout, stderr = (files.enter_context(open(out / f"{script}.{part}", "w+"))
                              for part in ("out", "err"))
            runs[script] = (subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / script), *args], stdout=stdout,
                stderr=stderr, text=True, cwd=ROOT), stdout, stderr)
        yield runs
        for process, _, _ in runs.values():
            if process.poll() is None:  # a test that timed out left it running
                process.kill()
                process.wait()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bench_script_prints_its_figures_as_json(script, started):
    _, keys = SCRIPTS[script]
    process, stdout, stderr = started[script]
    returncode = process.wait(timeout=600)
    stdout.seek(0)
    stderr.seek(0)
    assert returncode == 0, stderr.read()[-5000:]
    figures = json.loads(stdout.read().strip().splitlines()[-1])
    assert keys <= figures.keys()
    assert all(isinstance(figures[k], (int, float)) and figures[k] > 0 for k in keys)
