"""Request checks that need the workflow (its nodes and variants), answered with the exact
field at fault: the library's own checks say what is wrong, these say where."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from serve.context import BadField
from wtb_ray.domain.errors import InvalidInput
from wtb_ray.domain.graph import Workflow


def check_variant(workflow: Workflow, node: str, name: str, field: str) -> None:
    try:
        workflow.check_choice({node: name})
    except InvalidInput as exc:
        raise BadField(field, str(exc)) from None


def check_choice(workflow: Workflow, choice: Mapping[str, str], field: str) -> None:
    for node, name in choice.items():
        check_variant(workflow, node, name, f"{field}.{node}")


def check_nodes(workflow: Workflow, nodes: Iterable[str], field: str) -> None:
    for i, node in enumerate(nodes):
        if node not in workflow.nodes:
            raise BadField(f"{field}[{i}]", f"workflow {workflow.name!r} has no node {node!r} "
                                            f"(nodes: {', '.join(workflow.nodes)})")


def check_matrix(workflow: Workflow, variants: Mapping[str, list[str]] | None,
                 combinations: list[dict[str, str]] | None) -> None:
    if variants and combinations:
        raise BadField("combinations", "give variants (a matrix) or combinations (a list), "
                                       "not both")
    for node, names in (variants or {}).items():
        for name in names:
            check_variant(workflow, node, name, f"variants.{node}")
    for i, choice in enumerate(combinations or []):
        check_choice(workflow, choice, f"combinations[{i}]")
