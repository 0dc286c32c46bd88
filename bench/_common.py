"""Shared pieces of the benchmarks: a private PgBouncer, a scratch database, timing, output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def pgbouncer() -> Iterator[int]:
    """A PgBouncer in transaction mode on a free port, for this run only."""
    port, rundir = free_port(), tempfile.mkdtemp(prefix="wtb-bench-pgbouncer-")
    subprocess.run(["bash", str(ROOT / "cluster/pgbouncer/start.sh"), str(port), rundir],
                   check=True, capture_output=True)
    try:
        yield port
    finally:
        subprocess.run(["bash", str(ROOT / "cluster/pgbouncer/stop.sh"), str(port), rundir],
                       check=False)
        shutil.rmtree(rundir, ignore_errors=True)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    name = f"wtb_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def interleaved_ms(contenders: dict[str, Callable[[int], object]], runs: int, rounds: int = 5,
                   warmup: int = 20) -> dict[str, list[float]]:
    """Mean ms per call of each contender, per round; the contenders take turns within each
    round, so a shared, noisy machine slows them alike and per-round ratios stay fair."""
    counter = 0
    for fn in contenders.values():
        for _ in range(warmup):
            fn(counter := counter + 1)
    per_round: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for _ in range(runs):
                fn(counter := counter + 1)
            per_round[name].append((time.perf_counter() - start) * 1000 / runs)
    return per_round


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def report(rows: list[tuple[str, str]], figures: dict[str, float]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in figures.items()}))
