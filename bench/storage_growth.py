"""Storage growth: a 100-step run whose state has 5 keys of ~1 KiB, one changing per step.

WTB stores each top-level value once, content-addressed; a checkpoint records only the keys
that changed. "Ideal" is the initial state plus every changed value (their JSON bytes). Both
WTB and LangGraph (SqliteSaver) are measured as the growth of their SQLite file, all rows and
indexes included, after a WAL checkpoint. Values are random base64 (compression cannot help
much). Target: wtb_ratio_to_ideal <= 1.5. Last line: JSON.

    python bench/storage_growth.py [--steps N]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END as LG_END
from langgraph.graph import START, StateGraph

from bench._common import report
from wtb_ray import END, Route, Workflow
from wtb_ray.engine.bench import Bench
from wtb_ray.storage.store import Store

KEYS = ("k0", "k1", "k2", "k3", "k4")
VALUE_BYTES = 1024


def value(seed: int) -> str:
    rng = random.Random(seed)
    return base64.b64encode(rng.randbytes(VALUE_BYTES * 3 // 4)).decode()


def initial_state() -> dict:
    return {k: value(i) for i, k in enumerate(KEYS)} | {"step": 0}


def change(state) -> dict:
    step = state["step"] + 1
    return {KEYS[step % len(KEYS)]: value(1000 + step), "step": step}


def file_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def wtb_bytes(tmp: Path, steps: int) -> int:
    path = tmp / "wtb.db"
    Store.open(f"sqlite:///{path}").close()
    empty = file_bytes(path)
    wf = Workflow("growth", nodes={"change": change},
                  edges={"change": Route(lambda s: END if s["step"] >= steps else "change",
                                         ["change", END])},
                  entry="change", max_steps=steps + 1)
    with Bench(Store.open(f"sqlite:///{path}")) as bench:
        ex = bench.run(wf, initial_state())
        assert ex.step == steps, ex
    return file_bytes(path) - empty


class LGState(TypedDict):
    k0: str
    k1: str
    k2: str
    k3: str
    k4: str
    step: int


def langgraph_bytes(tmp: Path, steps: int) -> int:
    path = tmp / "langgraph.db"
    graph = StateGraph(LGState)
    graph.add_node("change", change)
    graph.add_edge(START, "change")
    graph.add_conditional_edges("change", lambda s: LG_END if s["step"] >= steps else "change")
    with sqlite3.connect(path, check_same_thread=False) as conn:
        saver = SqliteSaver(conn)
        saver.setup()
        conn.commit()
        empty = file_bytes(path)
        app = graph.compile(checkpointer=saver)
        out = app.invoke(initial_state(), {"configurable": {"thread_id": "t"},
                                           "recursion_limit": steps + 5})
        assert out["step"] == steps
    return file_bytes(path) - empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wtb-growth-"))
    state, ideal = initial_state(), 0
    ideal += sum(len(json.dumps(v)) for v in state.values())
    for _ in range(args.steps):
        update = change(state)
        ideal += sum(len(json.dumps(v)) for v in update.values())
        state.update(update)
    wtb = wtb_bytes(tmp, args.steps)
    lg = langgraph_bytes(tmp, args.steps)
    report([
        ("run", f"{args.steps} steps, 5 keys of ~{VALUE_BYTES} B, one changing per step"),
        ("ideal bytes (initial state + changed values)", f"{ideal:,}"),
        ("wtb, SQLite file growth", f"{wtb:,}  ({wtb / ideal:.2f}x ideal)"),
        ("langgraph SqliteSaver, file growth", f"{lg:,}  ({lg / ideal:.2f}x ideal)"),
    ], {"wtb_bytes": wtb, "langgraph_bytes": lg, "ideal_bytes": ideal,
        "wtb_ratio_to_ideal": wtb / ideal, "langgraph_ratio_to_ideal": lg / ideal})
    for f in tmp.iterdir():
        os.remove(f)
    tmp.rmdir()


if __name__ == "__main__":
    main()
