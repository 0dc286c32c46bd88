"""What a node sees besides the state: who it is, its params, and a place to report usage."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wtb_ray.domain.errors import InvalidInput

log = logging.getLogger("wtb_ray.node")


class NodeContext:
    """Passed as ``ctx`` to ``fn(state, ctx)``.

    ``params`` are the node's params merged with its variant's; ``report(tokens=..., cost=...)``
    adds numbers that evaluators and the leaderboard read from the node boundary;
    ``workspace`` is the execution's tracked directory (None if it has none);
    ``on_rollback(fn, *args)`` registers the undo of a side effect.
    """

    __slots__ = ("_undo", "attempt", "execution_id", "labels", "log", "node", "params", "step",
                 "usage", "variant", "workspace")

    def __init__(self, *, execution_id: str, node: str, variant: str, step: int, attempt: int,
                 params: Mapping[str, Any], labels: Mapping[str, Any],
                 workspace: Path | None = None, undo: list[dict[str, Any]] | None = None) -> None:
        self.execution_id = execution_id
        self.node = node
        self.variant = variant
        self.step = step
        self.attempt = attempt
        self.params = params
        self.labels = labels
        self.usage: dict[str, float] = {}
        self.log = log
        self.workspace = workspace
        self._undo = undo

    def report(self, **metrics: float) -> None:
        """Add to this node run's usage counters (summed if reported more than once)."""
        for name, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"usage {name!r} must be a number, got {value!r}")
            self.usage[name] = self.usage.get(name, 0) + value

    def on_rollback(self, fn: Callable[..., Any], *args: Any) -> str:
        """Register ``fn(*args)`` to undo a side effect this node caused; returns the
        idempotency key ``fn`` receives as ``idempotency_key=`` if it accepts that keyword.

        ``fn`` must be a module-level function (stored as ``module:qualname``; lambdas,
        closures and bound methods are refused) and ``args`` JSON-family data. It is stored
        with this node's boundary and runs, exactly once, when a rollback undoes this node run.
        """
        from wtb_ray.engine.compensation import registration

        if self._undo is None:
            raise InvalidInput("on_rollback is only available while a node runs in WTB")
        item = registration(fn, args)
        item["seq"] = len(self._undo)
        self._undo.append(item)
        return item["key"]

    def __repr__(self) -> str:
        return (f"NodeContext(execution={self.execution_id}, node={self.node}, "
                f"variant={self.variant}, step={self.step}, attempt={self.attempt})")
