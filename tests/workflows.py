"""Workflows the tests import by reference (``tests.workflows:chain``) from other processes.

Nodes record every run in ``state["log_path"]`` (one line per run), so a test can count how
often each node really ran, and can be held at a node: with ``state["hold_at"] == name`` the
node writes ``<hold_dir>/<name>.waiting`` and waits for ``<hold_dir>/<name>.go``.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path

from wtb_ray import END, Node, Retry, Route, Variant, Workflow


def touch_points(state, name: str) -> None:
    if state.get("log_path"):
        with open(state["log_path"], "a") as f:
            f.write(name + "\n")
    if state.get("hold_at") and name.startswith(state["hold_at"]):
        hold = Path(state["hold_dir"])
        point = state["hold_at"]
        (hold / f"{point}.waiting").write_text("")
        deadline = time.time() + 120
        while not (hold / f"{point}.go").exists():
            if time.time() > deadline:
                raise TimeoutError(f"node {name} was held for 120 s")
            time.sleep(0.02)


def make_node(name: str, factor: int):
    def node(state, ctx):
        touch_points(state, name)
        return {name: state.get("total", 0) * factor + ctx.params.get("bonus", 0) + 1,
                "total": state.get("total", 0) + factor + ctx.params.get("bonus", 0)}

    node.__name__ = node.__qualname__ = f"node_{name}"
    return node


chain = Workflow(
    "chain",
    nodes={
        "a": make_node("a", 1),
        "b": Node(make_node("b", 2), variants={"bonus": Variant(params={"bonus": 100})}),
        "c": make_node("c", 3),
        "d": make_node("d", 4),
    },
    edges={"a": "b", "b": "c", "c": "d", "d": END},
    entry="a",
)


def always_raises(state, ctx):
    touch_points(state, "boom")
    raise RuntimeError("this node always fails")


def fixed(state, ctx):
    touch_points(state, "boom")
    return {"fixed": True}


failing = Workflow(
    "failing",
    nodes={"a": make_node("a", 1),
           "boom": Node(always_raises, retry=Retry(attempts=2, backoff=0.01),
                        variants={"fixed": fixed}),
           "z": make_node("z", 5)},
    edges={"a": "boom", "boom": "z", "z": END},
    entry="a",
)


def counter(state, ctx):
    touch_points(state, "inc")
    return {"n": state.get("n", 0) + 1}


loop = Workflow(
    "loop",
    nodes={"inc": counter},
    edges={"inc": Route(lambda s: "inc" if s["n"] < s.get("until", 3) else END, ["inc", END])},
    entry="inc",
    max_steps=100,
)


# -- a workflow for batches: variants that add, multiply, fail, crash, or report their env ---

def exit_once(state, name: str) -> None:
    """Kill this process (no cleanup, like a segfault) the first time it gets here."""
    if state.get("exit_at") == name:
        marker = Path(state["hold_dir"]) / f"{name}.{state['x']}.exited"
        if not marker.exists():
            marker.write_text("")
            os._exit(1)


def cell_name(node: str, state, ctx) -> str:
    """`node:x:combination`, so a test can count the runs of each node of each cell."""
    return f"{node}:{state['x']}:{ctx.labels.get('combo', '')}"


def add(state, ctx):
    touch_points(state, cell_name("a", state, ctx))
    return {"sum": state["x"] + ctx.params.get("add", 1)}


def multiply(state, ctx):
    touch_points(state, cell_name("b", state, ctx))
    exit_once(state, "b")
    return {"y": state["sum"] * ctx.params.get("mul", 2)}


def fails(state, ctx):
    raise RuntimeError("this variant always fails")


def probe(state, ctx):
    try:
        six_version = importlib.metadata.version("six")
    except importlib.metadata.PackageNotFoundError:
        six_version = "absent"
    return {"flavor": os.environ.get("WTB_TEST_FLAVOR", "none"), "six": six_version}


matrix = Workflow(
    "matrix",
    nodes={
        "a": Node(add, variants={"add10": Variant(params={"add": 10}),
                                 "add100": Variant(params={"add": 100})}),
        "b": Node(multiply, variants={"triple": Variant(params={"mul": 3}), "fails": fails},
                  retry=Retry(attempts=1)),
        "c": Node(probe, variants={"alpha": probe, "beta": probe}),
    },
    edges={"a": "b", "b": "c", "c": END},
    entry="a",
)


def y_matches(state, case, facts):
    """Custom evaluator: y is what the case says for this combination (set by the test)."""
    return {"passed": state.get("y") in case.expected.get("ys", []), "y": state.get("y", 0)}
