"""From a spec to cells: every (variant combination, case, repeat), checked against the
workflow before anything is persisted."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from wtb_ray.batch.evaluators import load_custom
from wtb_ray.batch.spec import BatchSpec, Case
from wtb_ray.batch.stats import combo_key
from wtb_ray.domain.errors import InvalidInput
from wtb_ray.domain.graph import Workflow

MAX_CELLS = 200_000


@dataclass(frozen=True)
class Cell:
    choice: dict[str, str]
    combo: str
    case: Case
    repeat: int
    env_key: str  # "" runs in the cluster's default environment

    def labels(self) -> dict[str, Any]:
        return {"combo": self.combo, "case": self.case.id, "repeat": self.repeat,
                "env": self.env_key}


def env_key(env: dict[str, Any]) -> str:
    if not env:
        return ""
    return hashlib.blake2b(json.dumps(env, sort_keys=True).encode(), digest_size=6).hexdigest()


def check_against(spec: BatchSpec, wf: Workflow) -> None:
    """Refuse a spec that names nodes, variants or evaluators that do not exist."""
    for i, choice in enumerate(spec.choices()):
        try:
            wf.check_choice(choice)
        except InvalidInput as exc:
            where = "variants" if spec.variants is not None else f"combinations[{i}]"
            raise InvalidInput(f"batch spec: {where}: {exc}") from None
    for where in spec.runtime_env:
        node, _, variant = where.partition("=")
        try:
            wf.variant(node, variant)
        except InvalidInput as exc:
            raise InvalidInput(f"batch spec: runtime_env.{where}: {exc}") from None
    for i, ev in enumerate(spec.evaluators):
        if ev.type == "custom":
            try:
                load_custom(ev.ref)
            except InvalidInput as exc:
                raise InvalidInput(f"batch spec: evaluators[{i}].ref: {exc}") from None
    for choice in spec.choices():
        try:
            spec.runtime_env_for(choice)
        except InvalidInput as exc:
            raise InvalidInput(f"batch spec: {exc}") from None


def plan_cells(spec: BatchSpec) -> list[Cell]:
    choices = spec.choices()
    total = len(choices) * len(spec.cases) * spec.repeats
    if total > MAX_CELLS:
        raise InvalidInput(f"batch spec: {total} cells is more than the {MAX_CELLS} allowed")
    cells = []
    for choice in choices:
        key, env = combo_key(choice), env_key(spec.runtime_env_for(choice))
        for case in spec.cases:
            for repeat in range(spec.repeats):
                cells.append(Cell(choice, key, case, repeat, env))
    return cells
