"""HTTP API latency on Ray Serve, beside a no-op Serve endpoint measured in the same run.

On a local Ray instance (2 CPUs), the WTB API (embedded SQLite) and a no-op FastAPI
deployment behind the same Serve proxy each get an open-loop load of --rate requests/s for
--seconds (requests leave on schedule whether or not earlier ones have answered, so a slow
server shows up as latency rather than as a slower sender):

- no-op:   GET /noop/                      (Serve's own floor: proxy, routing, replica call)
- status:  GET /v1/batches/{id}            (a batch's status and progress counts)
- submit:  POST /v1/batches                (a 1-case batch: checked, persisted with its cell,
                                            handed to the orchestrator; answers at once)

The replicas reserve no CPU, so both CPUs go to batch executors: the submitted batches run on
the same 2 cores while the load goes on. The report says how many had completed when the
load ended and how long the rest took.

Targets: submit p50 <= 20 ms, status p99 <= 50 ms, status p50 <= 2x the no-op's. Last line:
JSON.

    python bench/serve_latency.py [--rate 50] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import ray
from fastapi import FastAPI
from ray import serve

from bench._common import free_port, report
from wtb_ray.config import Settings

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
BATCH = {"workflow": "astro-qa", "name": "latency",
         "cases": [{"id": "venus", "input": {"question": "Which planet is the hottest?"},
                    "expected": {"answer_contains": "Venus"}}],
         "evaluators": [{"type": "contains", "key": "answer", "expected": "answer_contains"}]}

noop_api = FastAPI()


@serve.deployment(name="noop", max_ongoing_requests=100, ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_api)
class Noop:
    @noop_api.get("/")
    def ok(self) -> dict:
        return {"ok": True}


async def timed(client: httpx.AsyncClient, method: str, path: str, expect: int,
                **kwargs) -> float:
    start = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != expect:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
    return elapsed


async def open_loop(client: httpx.AsyncClient, rate: float, seconds: float, method: str,
                    path: str, expect: int, **kwargs) -> list[float]:
    """Send rate x seconds requests on a fixed schedule; latencies in ms."""
    loop = asyncio.get_running_loop()
    start, tasks = loop.time(), []
    for i in range(max(1, int(rate * seconds))):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(client, method, path, expect, **kwargs)))
    return list(await asyncio.gather(*tasks))


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(base: str, rate: float, seconds: float, warmup: int) -> dict[str, list[float]]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        first = await client.post("/v1/batches", json=BATCH)
        first.raise_for_status()
        batch_id = first.json()["id"]
        for _ in range(600):  # measure from a steady state: executors started, batch done
            if (await client.get(f"/v1/batches/{batch_id}")).json()["batch"]["status"] == \
                    "completed":
                break
            await asyncio.sleep(0.1)
        plans = {"noop": ("GET", "/noop/", 200, {}),
                 "status": ("GET", f"/v1/batches/{batch_id}", 200, {}),
                 "submit": ("POST", "/v1/batches", 202, {"json": BATCH})}
        figures = {}
        for name, (method, path, expect, kwargs) in plans.items():
            for _ in range(warmup):  # connections opened, code paths warm
                await timed(client, method, path, expect, **kwargs)
            print(f"{name}: {rate:g} req/s for {seconds:g} s ...", file=sys.stderr)
            figures[name] = await open_loop(client, rate, seconds, method, path, expect,
                                            **kwargs)
        return figures


def batch_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM batches GROUP BY status"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="per endpoint")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="wtb-bench-serve-"))
    port = free_port()
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'wtb.db'}",
                        api_token=TOKEN, api_port=port)
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="wtb",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        from serve.deploy import deploy

        deploy(settings, name="wtb", route_prefix="/")
        serve.run(Noop.bind(), name="noop", route_prefix="/noop")
        lat = asyncio.run(measure(f"http://127.0.0.1:{port}", args.rate, args.seconds,
                                  args.warmup))
        load_ended = time.monotonic()
        at_end = batch_counts(home / "wtb.db")
        while (left := batch_counts(home / "wtb.db")).get("completed", 0) < sum(left.values()):
            if time.monotonic() - load_ended > 300:
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - load_ended
    finally:
        serve.shutdown()
        ray.shutdown()

    figures = {"submit_p50_ms": percentile(lat["submit"], 50),
               "submit_p99_ms": percentile(lat["submit"], 99),
               "status_p50_ms": percentile(lat["status"], 50),
               "status_p99_ms": percentile(lat["status"], 99),
               "noop_p50_ms": percentile(lat["noop"], 50),
               "noop_p99_ms": percentile(lat["noop"], 99)}
    figures["ratio_status_vs_noop"] = figures["status_p50_ms"] / figures["noop_p50_ms"]
    figures["batches_submitted"] = sum(left.values())
    figures["batches_completed_when_load_ended"] = at_end.get("completed", 0)
    figures["batches_completed"] = left.get("completed", 0)
    figures["seconds_to_complete_the_rest"] = round(drain_s, 1)
    n = {k: len(v) for k, v in lat.items()}
    report([("load", f"{args.rate:g} req/s for {args.seconds:g} s per endpoint (open loop)"),
            ("no-op p50 / p99", f"{figures['noop_p50_ms']:.1f} / {figures['noop_p99_ms']:.1f} ms"
                                f"  ({n['noop']} requests)"),
            ("status p50 / p99", f"{figures['status_p50_ms']:.1f} / "
                                 f"{figures['status_p99_ms']:.1f} ms  ({n['status']} requests;"
                                 " target p99 <= 50 ms)"),
            ("submit p50 / p99", f"{figures['submit_p50_ms']:.1f} / "
                                 f"{figures['submit_p99_ms']:.1f} ms  ({n['submit']} requests;"
                                 " target p50 <= 20 ms)"),
            ("status p50 vs no-op", f"{figures['ratio_status_vs_noop']:.2f}x  (target <= 2x)"),
            ("batches run", f"{figures['batches_completed_when_load_ended']} of "
                            f"{figures['batches_submitted']} completed when the load ended; "
                            f"{figures['batches_completed']} completed "
                            f"{figures['seconds_to_complete_the_rest']:.1f} s later")],
           figures)


if __name__ == "__main__":
    main()
