"""Workflows the batch benchmark runs on Ray (imported by reference in the executors)."""

from bench.batch_throughput import NODES, busy_node, trivial_node
from wtb_ray import END, Workflow


def _chain(name: str, fn) -> Workflow:
    names = [f"n{i}" for i in range(NODES)]
    return Workflow(name, nodes={n: fn for n in names},
                    edges=dict(zip(names, [*names[1:], END], strict=True)), entry="n0")


trivial10 = _chain("trivial10", trivial_node)
busy10 = _chain("busy10", busy_node)
