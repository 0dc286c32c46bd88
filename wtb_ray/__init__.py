"""WTB: the Workflow Test Bench core library. Pure Python; never imports Ray.

Workflow modules import the graph API from here; the rest loads on first use so that
importing a workflow stays cheap (``Bench`` pulls in SQLAlchemy).
"""

from wtb_ray.domain.errors import (
    ConcurrencyConflict,
    GraphError,
    InvalidInput,
    InvalidTransition,
    NodeFailed,
    NotFound,
    SerializationError,
    WTBError,
)
from wtb_ray.domain.execution import Execution, Status
from wtb_ray.domain.graph import END, Workflow
from wtb_ray.domain.nodes import Node, Retry, Route, Variant

__all__ = [
    "END", "Bench", "ConcurrencyConflict", "Execution", "GraphError", "InvalidInput",
    "InvalidTransition", "Node", "NodeFailed", "NotFound", "Retry", "Route", "SerializationError",
    "Settings", "Status", "Variant", "WTBError", "Workflow",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Bench":
        from wtb_ray.engine.bench import Bench

        return Bench
    if name == "Settings":
        from wtb_ray.config import Settings

        return Settings
    raise AttributeError(f"module 'wtb_ray' has no attribute {name!r}")
