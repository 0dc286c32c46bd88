"""Job entrypoint: run a batch on the cluster this job runs in.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        -- python -m cluster.jobs.run_batch SPEC [--db URL]

Progress goes to the job's log; the last line is the result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from actors import client
from wtb_ray.batch.plan import check_against, plan_cells
from wtb_ray.batch.spec import load_spec
from wtb_ray.config import Settings
from wtb_ray.engine.loader import load_workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a WTB batch on this Ray cluster.")
    parser.add_argument("spec", help="batch spec file (YAML or JSON)")
    parser.add_argument("--db", help="database URL (default: WTB_DATABASE_URL or ~/.wtb)")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    check_against(spec, load_workflow(spec.workflow))
    plan_cells(spec)
    client.connect("auto")
    orchestrator, batch_id = client.submit(spec, Settings().with_database(args.db))
    print(f"batch {batch_id} submitted", flush=True)

    def report(progress: dict) -> None:
        b = progress["batch"]
        print(f"batch {batch_id}: {b['status']} {b['completed']} completed, {b['failed']} "
              f"failed, {b['cancelled']} cancelled of {b['total']}", flush=True)

    told = {"at": 0.0}

    def outage(error: str, since: float, last: dict | None) -> None:
        if time.time() - told["at"] >= 30:  # a line every 30 s, not every poll
            told["at"] = time.time()
            print(f"batch {batch_id}: database unreachable for {time.time() - since:.0f} s "
                  f"({error}); the batch goes on, still following", flush=True)

    final = client.follow(orchestrator, batch_id, report, poll_s=2.0, on_outage=outage)
    import ray

    final["leaderboard"] = ray.get(orchestrator.leaderboard.remote(batch_id))
    print(json.dumps(final))
    return 0 if final["batch"]["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
