"""VariantExecutionActor: runs chunks of batch cells in its own runtime_env.

Its engine, database connection and checkpoint store are built once in ``__init__`` and
reused for every chunk (a restart runs ``__init__`` again). It holds the lease on each
execution it runs; if it dies, the orchestrator gives those executions to a replacement,
which resumes each from its last checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from actors.priority import yield_to_interactive
from actors.restart import open_bench
from wtb_ray.batch.service import BatchService
from wtb_ray.config import Settings
from wtb_ray.engine.bench import Bench


# "info" answers in a thread of its own even while a chunk runs; chunks still run one at a time.
def latency_report(bench: Bench) -> dict[str, Any]:
    """Node and checkpoint-write latency since the last report (the orchestrator adds up)."""
    return {"node": bench.runner.node_latency.take(), "write": bench.store.write_latency.take()}


@ray.remote(num_cpus=1, max_restarts=0, concurrency_groups={"info": 1})
class VariantExecutionActor:
    def __init__(self, settings: dict[str, Any]) -> None:
        yield_to_interactive(settings["batch_niceness"], settings["batch_sched_idle"])
        # Started by the orchestrator just after it read the database: the database away now
        # is most likely an outage, which every query rides out for WTB_RECONNECT_SECONDS.
        # Failing at once, three executors started in a short outage failed the batch's
        # cells unstarted (as for an environment that cannot be built). Still away after
        # that, the start fails with the reason (say, a node that cannot reach the URL).
        self.bench = open_bench(Settings(**settings), wait_s=settings["reconnect_seconds"])
        self.service = BatchService(self.bench)

    def run(self, batch_id: str, execution_ids: list[str], takeover: bool) -> dict[str, Any]:
        report = self.service.run_chunk(batch_id, execution_ids, takeover=takeover)
        return {"statuses": report.statuses, "skipped": report.skipped,
                "latency": latency_report(self.bench)}

    @ray.method(concurrency_group="info")
    def info(self) -> dict[str, Any]:
        """Where this actor runs and what it sees (tests check each runtime_env)."""
        return {"pid": os.getpid(), "env": dict(os.environ)}
