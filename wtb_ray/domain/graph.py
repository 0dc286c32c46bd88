"""Workflow graphs: nodes, variants, static and conditional edges, validated when defined.
What a graph is made of (Node, Variant, Route, Retry) is in domain/nodes.py.

A workflow is a state machine over named nodes: exactly one node runs per step, and its
outgoing edge (a fixed successor, or a router choosing among declared targets) names the next
node or END. Cycles are allowed and bounded by ``max_steps``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from wtb_ray.domain.errors import GraphError, InvalidInput, RoutingError
from wtb_ray.domain.nodes import (
    Node,
    NodeFn,
    ResolvedNode,
    Route,
    Variant,
    is_async,
    takes_ctx,
)

END = "__end__"
DEFAULT_VARIANT = "default"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")

class Workflow:
    """A named, versioned workflow graph, validated when constructed.

    ``edges`` maps every node to its successor: a node name, END, or a :class:`Route`.
    """

    def __init__(
        self,
        name: str,
        nodes: Mapping[str, Node | NodeFn],
        edges: Mapping[str, str | Route],
        entry: str | None,
        *,
        version: str = "1",
        max_steps: int = 100,
        description: str = "",
    ) -> None:
        if not name or not isinstance(name, str):
            raise GraphError("a workflow needs a non-empty name")
        self.name = name
        self.version = str(version)
        self.description = description
        self.max_steps = max_steps
        self.entry = entry
        self.ref: str | None = None  # set by the loader; lets other processes re-import it
        # Where it was defined, so its import reference can be found without being told.
        self.defined_in: str | None = sys._getframe(1).f_globals.get("__name__")
        self.nodes: dict[str, Node] = {
            n: spec if isinstance(spec, Node) else Node(spec) for n, spec in nodes.items()
        }
        self.edges: dict[str, str | Route] = dict(edges)
        self._variants: dict[str, dict[str, Variant]] = {n: {} for n in self.nodes}
        self._resolved: dict[tuple[str, str], ResolvedNode] = {}
        self._validate_structure()
        for node_name, node in self.nodes.items():
            for variant_name, variant in node.variants.items():
                self.add_variant(node_name, variant_name, variant)

    # -- definition ---------------------------------------------------------------------

    def _validate_structure(self) -> None:
        where = f"workflow {self.name!r}"
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise GraphError(f"{where}: max_steps must be a positive integer, "
                             f"got {self.max_steps!r}")
        if not self.nodes:
            raise GraphError(f"{where} has no nodes")
        for node_name, node in self.nodes.items():
            if not isinstance(node_name, str) or not _NAME.match(node_name) or node_name == END:
                raise GraphError(f"{where}: invalid node name {node_name!r} "
                                 "(letters, digits, _ . - ; must not start with a digit)")
            if not callable(node.fn):
                raise GraphError(f"{where}: node {node_name!r} is not callable: {node.fn!r}")
            takes_ctx(node.fn, f"{where}: node {node_name!r}")
            if node.timeout is not None and node.timeout <= 0:
                raise GraphError(f"{where}: node {node_name!r} timeout must be > 0")
        if not self.entry:
            raise GraphError(f"{where} has no entry node")
        if self.entry not in self.nodes:
            raise GraphError(f"{where}: entry {self.entry!r} is not a node "
                             f"(nodes: {', '.join(self.nodes)})")
        for source, target in self.edges.items():
            if source not in self.nodes:
                raise GraphError(f"{where}: edge from unknown node {source!r}")
            for t in self.successors_of(source):
                if t != END and t not in self.nodes:
                    hint = " (to end the run there, use wtb_ray.END)" if t is None else ""
                    raise GraphError(f"{where}: edge {source!r} -> {t!r} points to an unknown node "
                                     f"(nodes: {', '.join(self.nodes)}){hint}")
            if isinstance(target, Route) and not target.targets:
                raise GraphError(f"{where}: router on {source!r} declares no targets")
        missing = [n for n in self.nodes if n not in self.edges]
        if missing:
            raise GraphError(f"{where}: node(s) {', '.join(map(repr, missing))} have no outgoing "
                             "edge (point them at another node or END)")
        reachable = self._reachable_from(self.entry)
        unreachable = [n for n in self.nodes if n not in reachable]
        if unreachable:
            raise GraphError(f"{where}: node(s) {', '.join(map(repr, unreachable))} are "
                             f"unreachable from entry {self.entry!r}")
        if END not in reachable:
            raise GraphError(f"{where}: no path from entry {self.entry!r} reaches END")

    def successors_of(self, node: str) -> tuple[str, ...]:
        target = self.edges[node]
        return target.targets if isinstance(target, Route) else (target,)

    def _reachable_from(self, start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            current = todo.pop()
            if current == END:
                continue
            for nxt in self.successors_of(current):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def add_variant(self, node: str, name: str, variant: Variant | NodeFn | None = None,
                    *, params: Mapping[str, Any] | None = None,
                    runtime_env: Mapping[str, Any] | None = None) -> Workflow:
        """Register an alternative implementation (or params) for ``node``; returns self."""
        self._require_node(node)
        if name == DEFAULT_VARIANT or not _NAME.match(name or ""):
            raise GraphError(f"workflow {self.name!r}: invalid variant name {name!r} for node "
                             f"{node!r} ({DEFAULT_VARIANT!r} is the node's own implementation)")
        if variant is None or (callable(variant) and not isinstance(variant, Variant)):
            variant = Variant(fn=variant, params=params or {}, runtime_env=runtime_env)
        elif params is not None or runtime_env is not None:
            raise GraphError("pass params/runtime_env inside the Variant, not beside it")
        if variant.fn is not None:
            takes_ctx(variant.fn, f"workflow {self.name!r}: variant {node}={name}")
        self._variants[node][name] = variant
        self._resolved.pop((node, name), None)
        return self

    # -- queries ------------------------------------------------------------------------

    def _require_node(self, node: str) -> Node:
        try:
            return self.nodes[node]
        except KeyError:
            raise InvalidInput(f"workflow {self.name!r} has no node {node!r} "
                               f"(nodes: {', '.join(self.nodes)})") from None

    def variants_of(self, node: str) -> list[str]:
        self._require_node(node)
        return [DEFAULT_VARIANT, *self._variants[node]]

    def variant(self, node: str, name: str) -> Variant:
        self._require_node(node)
        if name == DEFAULT_VARIANT:
            return Variant()
        try:
            return self._variants[node][name]
        except KeyError:
            raise InvalidInput(f"node {node!r} of workflow {self.name!r} has no variant {name!r} "
                               f"(variants: {', '.join(self.variants_of(node))})") from None

    def check_choice(self, choice: Mapping[str, str]) -> dict[str, str]:
        """Validate a node -> variant mapping; returns it without 'default' entries."""
        for node, name in choice.items():
            self.variant(node, name)
        return {n: v for n, v in choice.items() if v != DEFAULT_VARIANT}

    def check_nodes(self, names: Iterable[str], what: str) -> list[str]:
        names = list(names)
        for n in names:
            if n not in self.nodes:
                raise InvalidInput(f"{what}: workflow {self.name!r} has no node {n!r} "
                                   f"(nodes: {', '.join(self.nodes)})")
        return names

    def resolve(self, node: str, variant_name: str = DEFAULT_VARIANT) -> ResolvedNode:
        key = (node, variant_name)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(node, variant_name)
        return self._resolved[key]

    def _resolve(self, node: str, variant_name: str) -> ResolvedNode:
        spec = self._require_node(node)
        variant = self.variant(node, variant_name)
        fn = variant.fn or spec.fn
        return ResolvedNode(
            name=node, variant=variant_name, fn=fn,
            takes_ctx=takes_ctx(fn, f"node {node!r}"), is_async=is_async(fn),
            params=MappingProxyType({**spec.params, **variant.params}),
            retry=spec.retry, timeout=spec.timeout, runtime_env=variant.runtime_env,
        )

    def route(self, node: str, state: Mapping[str, Any]) -> str:
        """The node to run after ``node`` (or END), checking a router's answer."""
        target = self.edges[node]
        if not isinstance(target, Route):
            return target
        chosen = target.router(state)
        if chosen not in target.targets:
            raise RoutingError(f"router {target.name!r} after node {node!r} returned {chosen!r}, "
                               f"which is not one of its targets ({', '.join(target.targets)})")
        return chosen

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: nodes, variants and edges."""
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "entry": self.entry,
            "max_steps": self.max_steps,
            "description": self.description,
            "nodes": {
                n: {"variants": self.variants_of(n), "description": spec.description,
                    "retry_attempts": spec.retry.attempts, "timeout": spec.timeout}
                for n, spec in self.nodes.items()
            },
            "edges": {
                n: ({"router": t.name, "targets": list(t.targets)} if isinstance(t, Route) else t)
                for n, t in self.edges.items()
            },
        }

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, version={self.version!r}, nodes={list(self.nodes)})"
