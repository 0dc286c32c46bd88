"""Field types the batch spec and the HTTP API's request bodies share: each refuses a bad
value with a message the caller shows next to the field's path."""

from __future__ import annotations

from typing import Annotated

import regex
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from wtb_ray.domain.errors import InvalidInput
from wtb_ray.workspace.ignore import IgnoreRules


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here, naming the field, not at insert time.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\x00)")
    return value


NoNul = AfterValidator(_no_nul)


def _ignore_pattern(value: str) -> str:
    try:
        IgnoreRules([value])
    except InvalidInput as exc:  # as a validation error, so the answer names the item
        raise ValueError(str(exc)) from None
    return value


IgnorePattern = Annotated[str, Field(min_length=1, max_length=200), NoNul,
                          AfterValidator(_ignore_pattern)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def ignore_needs_workspace(value: list[str], info: ValidationInfo) -> list[str]:
    """A field validator of ``workspace_ignore`` (declared after ``workspace``): patterns
    without a workspace would be silently dropped, so they are refused."""
    if value and not info.data.get("workspace"):
        raise ValueError("ignore patterns need a workspace (workspace: true)")
    return value


def check_pattern(value: str) -> None:
    """Raise ValueError unless ``value`` compiles (with the ``regex`` library, which the
    regex evaluator runs with a time limit)."""
    try:
        regex.compile(value)
    except regex.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
