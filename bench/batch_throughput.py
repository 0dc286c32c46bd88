"""Batch throughput on Ray (2 CPUs): WTB vs a raw Ray ActorPool vs Ray Tune, one run.

- WTB: a batch of N executions of a 10-node trivial workflow, every node boundary a durable
  SQLite checkpoint, run by the orchestrator on a pool of executor actors. Timed from submit
  (which persists every cell first) to the batch's completion.
- Raw pool: ray.util.ActorPool over the same number of actors, each item running the same
  10 node functions with no persistence.
- Ray Tune: the same 10 node functions as trials (fewer trials; rate per trial).
- CPU-bound: nodes that burn 20 ms of CPU each; 2 executor actors vs 1.

Targets: wtb >= 200 executions/s, >= 0.25x the raw pool, >= 100x Ray Tune, 2 actors >= 1.8x
one on CPU-bound nodes. Last line: JSON.

    python bench/batch_throughput.py [--executions N] [--tune-trials N] [--cpu-executions N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
from ray.util import ActorPool

from bench._common import report
from wtb_ray.batch.spec import parse_spec
from wtb_ray.config import Settings

ROOT = Path(__file__).resolve().parents[1]
NODES = 10


def trivial_node(state):
    return {"count": state["count"] + 1}


def busy_node(state):
    """About 20 ms of pure-Python CPU work."""
    end = time.process_time() + 0.020
    x = 0
    while time.process_time() < end:
        x += 1
    return {"count": state["count"] + 1}


def run_nodes(fn, n: int = NODES) -> dict:
    state = {"count": 0}
    for _ in range(n):
        state = {**state, **fn(state)}
    return state


def wtb_rate(executions: int, workflow: str, parallelism: int, chunk: int) -> float:
    """Executions per second from submit (cells persisted first) to the batch's completion,
    with executors warmed by a small batch first, as the raw pool's actors are."""
    from actors.orchestrator import get_or_create

    db = Path(tempfile.mkdtemp(prefix="wtb-throughput-")) / "wtb.db"
    settings = Settings(database_url=f"sqlite:///{db}",
                        orchestrator_name=f"wtb-bench-{os.getpid()}-{time.time_ns()}")
    orchestrator = get_or_create(settings)

    def batch(n: int) -> float:
        spec = parse_spec({"workflow": workflow, "parallelism": parallelism,
                           "chunk_size": chunk, "cases": [{"id": f"c{i}", "input": {"count": 0}}
                                                          for i in range(n)]})
        start = time.perf_counter()
        batch_id = ray.get(orchestrator.submit.remote(spec.model_dump(mode="json")))
        status = ray.get(orchestrator.wait.remote(batch_id, 3600))
        assert status["batch"]["completed"] == n, status["batch"]
        return time.perf_counter() - start

    batch(parallelism * chunk)  # warm: every executor started, with the workflow imported
    elapsed = batch(executions)
    ray.kill(orchestrator)  # its executors go with it
    shutil.rmtree(db.parent, ignore_errors=True)
    return executions / elapsed


@ray.remote(num_cpus=1)
class RawWorker:
    def run(self, _item: int) -> dict:
        return run_nodes(trivial_node)


def raw_pool_rate(items: int, actors: int = 2) -> float:
    workers = [RawWorker.remote() for _ in range(actors)]
    pool = ActorPool(workers)
    list(pool.map(lambda a, v: a.run.remote(v), range(20)))  # warm
    start = time.perf_counter()
    results = list(pool.map(lambda a, v: a.run.remote(v), range(items)))
    elapsed = time.perf_counter() - start
    assert all(r["count"] == NODES for r in results)
    for worker in workers:  # free their CPUs for what runs next
        ray.kill(worker)
    return items / elapsed


def tune_rate(trials: int) -> float:
    from ray import tune

    def trainable(config):
        tune.report({"count": run_nodes(trivial_node)["count"]})

    storage = tempfile.mkdtemp(prefix="wtb-tune-")
    start = time.perf_counter()
    tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(trials)))},
                       run_config=tune.RunConfig(storage_path=storage, verbose=0))
    results = tuner.fit()
    elapsed = time.perf_counter() - start
    assert len(results) == trials and not results.errors
    shutil.rmtree(storage, ignore_errors=True)
    return trials / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--tune-trials", type=int, default=20)
    parser.add_argument("--cpu-executions", type=int, default=40)
    parser.add_argument("--chunk-size", type=int, default=50)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             namespace="wtb", runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    # Ray Tune last: its trial actors and placement groups take a while to go away.
    wtb = wtb_rate(args.executions, "bench.batch_workflows:trivial10", 2, args.chunk_size)
    cpu_chunk = max(1, args.cpu_executions // 8)
    cpu_one = wtb_rate(args.cpu_executions, "bench.batch_workflows:busy10", 1, cpu_chunk)
    cpu_two = wtb_rate(args.cpu_executions, "bench.batch_workflows:busy10", 2, cpu_chunk)
    raw = raw_pool_rate(args.executions)
    tune_per_s = tune_rate(args.tune_trials)
    ray.shutdown()
    report([
        ("wtb batch, durable SQLite, 2 executors", f"{wtb:.0f} executions/s "
                                                   f"({args.executions} x {NODES} nodes)"),
        ("raw Ray ActorPool, 2 actors, no persistence", f"{raw:.0f} items/s"),
        ("Ray Tune", f"{tune_per_s:.2f} trials/s ({args.tune_trials} trials)"),
        ("wtb / raw pool", f"{wtb / raw:.2f}x"),
        ("wtb / Ray Tune", f"{wtb / tune_per_s:.0f}x"),
        ("CPU-bound nodes (20 ms), 2 executors vs 1",
         f"{cpu_two:.2f} vs {cpu_one:.2f} executions/s = {cpu_two / cpu_one:.2f}x"),
    ], {"wtb_exec_per_s": wtb, "raw_pool_items_per_s": raw, "ratio_vs_raw_pool": wtb / raw,
        "tune_trials_per_s": tune_per_s, "ratio_vs_tune": wtb / tune_per_s,
        "cpu_bound_speedup_2_vs_1": cpu_two / cpu_one})


if __name__ == "__main__":
    main()
