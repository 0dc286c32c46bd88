"""What a workflow is made of: nodes, their variants and retry policies, conditional edges,
and a node resolved for one variant (what the runner calls)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wtb_ray.domain.errors import GraphError

NodeFn = Callable[..., Any]


@dataclass(frozen=True)
class Retry:
    """Per-node retry policy: ``attempts`` in all, exponential backoff between them."""

    attempts: int = 1
    backoff: float = 0.0
    multiplier: float = 2.0
    max_backoff: float = 30.0
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise GraphError(f"Retry.attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.multiplier < 1 or self.max_backoff < 0:
            raise GraphError("Retry.backoff, max_backoff must be >= 0 and multiplier >= 1")

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        return min(self.backoff * self.multiplier ** (failed_attempt - 1), self.max_backoff)

    def retries(self, error: BaseException) -> bool:
        return isinstance(error, self.on)


@dataclass(frozen=True)
class Variant:
    """An alternative implementation of a node: another callable, other params, or both.

    ``fn=None`` keeps the node's own callable; ``params`` are merged over the node's params.
    ``runtime_env`` is the Ray runtime_env this variant needs when run on a cluster.
    """

    fn: NodeFn | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    runtime_env: Mapping[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class Route:
    """A conditional edge: ``router(state)`` returns one of ``targets`` (node names or END)."""

    router: Callable[[Mapping[str, Any]], str]
    targets: tuple[str, ...]

    def __init__(self, router: Callable[[Mapping[str, Any]], str], targets: Iterable[str]):
        object.__setattr__(self, "router", router)
        object.__setattr__(self, "targets", tuple(targets))

    @property
    def name(self) -> str:
        return getattr(self.router, "__qualname__", repr(self.router))


@dataclass
class Node:
    """A workflow node: ``fn(state, ctx)`` (or ``fn(state)``), sync or async.

    It returns a partial state update (a mapping merged into the state) or None.
    """

    fn: NodeFn
    params: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, Variant | NodeFn] = field(default_factory=dict)
    retry: Retry = field(default_factory=Retry)
    timeout: float | None = None
    description: str = ""


@dataclass(frozen=True)
class ResolvedNode:
    """What the runner needs to call one node with one variant; computed once per execution."""

    name: str
    variant: str
    fn: NodeFn
    takes_ctx: bool
    is_async: bool
    params: Mapping[str, Any]
    retry: Retry
    timeout: float | None
    runtime_env: Mapping[str, Any] | None


def takes_ctx(fn: NodeFn, where: str) -> bool:
    """Whether ``fn`` is called as fn(state, ctx) rather than fn(state); a callable that takes
    neither fails, naming ``where`` it was given."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()) or len(positional) >= 2:
        return True
    if len(positional) == 1:
        return False
    raise GraphError(f"{where}: a node callable takes (state, ctx) or (state); "
                     f"{fn!r} takes neither")


def is_async(fn: NodeFn) -> bool:
    # An object whose __call__ is async counts too.
    call = type(fn).__dict__.get("__call__")
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
