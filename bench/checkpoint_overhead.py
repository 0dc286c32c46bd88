"""Checkpoint overhead: one 10-node workflow of trivial nodes, WTB vs LangGraph, one run.

WTB commits a durable checkpoint (checkpoint, node boundary, audit entry, outbox row) at every
node boundary. LangGraph runs the same graph with no checkpointer, with SqliteSaver, and with
PostgresSaver through PgBouncer (prepare_threshold=None). The contenders take turns in each
round; figures are medians over rounds of ms per workflow run, ratios medians of per-round
ratios. The last line is JSON. Targets: ratio_sqlite <= 0.33, ratio_pgbouncer <= 0.5.

    python bench/checkpoint_overhead.py [--runs N] [--rounds N]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END as LG_END
from langgraph.graph import START, StateGraph
from psycopg.rows import dict_row

from bench._common import (
    interleaved_ms,
    median_ratio,
    pgbouncer,
    report,
    scratch_database,
)
from wtb_ray import END, Workflow
from wtb_ray.engine.bench import Bench
from wtb_ray.storage import db, migrate
from wtb_ray.storage.store import Store

NODES = 10


def increment(state, ctx=None):
    return {"count": state["count"] + 1}


def wtb_workflow() -> Workflow:
    names = [f"n{i}" for i in range(NODES)]
    edges = dict(zip(names, [*names[1:], END], strict=True))
    return Workflow("trivial10", nodes={n: increment for n in names}, edges=edges, entry="n0")


class LGState(TypedDict):
    count: int


def langgraph_app(checkpointer=None):
    graph = StateGraph(LGState)
    for i in range(NODES):
        graph.add_node(f"n{i}", increment)
    graph.add_edge(START, "n0")
    for i in range(NODES - 1):
        graph.add_edge(f"n{i}", f"n{i + 1}")
    graph.add_edge(f"n{NODES - 1}", LG_END)
    return graph.compile(checkpointer=checkpointer)


def wtb_runner(stack: ExitStack, url: str):
    bench = Bench(Store.open(url, auto_migrate=True))
    stack.callback(bench.close)
    wf = wtb_workflow()

    def one(_):
        assert bench.run(wf, {"count": 0}).step == NODES

    return one


def langgraph_runner(app, threaded: bool):
    def one(i):
        config = {"configurable": {"thread_id": f"t{i}"}} if threaded else None
        assert app.invoke({"count": 0}, config)["count"] == NODES

    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="workflow runs per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wtb-bench-"))

    with ExitStack() as stack:
        port = stack.enter_context(pgbouncer())
        # Separate databases: both systems name a table "checkpoints".
        wtb_db, lg_db = stack.enter_context(scratch_database()), stack.enter_context(
            scratch_database())
        wtb_pg_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{wtb_db}"
        engine = db.make_engine(wtb_pg_url)
        migrate.upgrade(engine)
        engine.dispose()
        lg_sqlite = stack.enter_context(sqlite3.connect(tmp / "lg.db", check_same_thread=False))
        lg_pg = stack.enter_context(psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/{lg_db}", autocommit=True,
            prepare_threshold=None, row_factory=dict_row))
        saver = PostgresSaver(lg_pg)
        saver.setup()
        t = interleaved_ms({
            "lg_plain": langgraph_runner(langgraph_app(), threaded=False),
            "wtb_sqlite": wtb_runner(stack, f"sqlite:///{tmp / 'wtb.db'}"),
            "lg_sqlite": langgraph_runner(langgraph_app(SqliteSaver(lg_sqlite)), threaded=True),
            "wtb_pg": wtb_runner(stack, wtb_pg_url),
            "lg_pg": langgraph_runner(langgraph_app(saver), threaded=True),
        }, args.runs, args.rounds)

    med = {k: statistics.median(v) for k, v in t.items()}
    ratio_sqlite = median_ratio(t["wtb_sqlite"], t["lg_sqlite"])
    ratio_pg = median_ratio(t["wtb_pg"], t["lg_pg"])
    report([
        ("workflow", f"{NODES} trivial nodes; ms per run, median of {args.rounds} rounds "
                     f"x {args.runs} runs"),
        ("langgraph, no checkpointer", f"{med['lg_plain']:.2f}"),
        ("langgraph + SqliteSaver", f"{med['lg_sqlite']:.2f}"),
        ("wtb, durable SQLite", f"{med['wtb_sqlite']:.2f}  ({ratio_sqlite:.2f}x)"),
        ("langgraph + PostgresSaver via PgBouncer", f"{med['lg_pg']:.2f}"),
        ("wtb, PostgreSQL via PgBouncer", f"{med['wtb_pg']:.2f}  ({ratio_pg:.2f}x)"),
    ], {
        "wtb_sqlite_ms_per_run": med["wtb_sqlite"],
        "langgraph_sqlite_ms_per_run": med["lg_sqlite"],
        "ratio_sqlite": ratio_sqlite,
        "wtb_pgbouncer_ms_per_run": med["wtb_pg"],
        "langgraph_pgbouncer_ms_per_run": med["lg_pg"],
        "ratio_pgbouncer": ratio_pg,
        "langgraph_no_checkpointer_ms_per_run": med["lg_plain"],
    })


if __name__ == "__main__":
    main()
