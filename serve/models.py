"""Request bodies of the HTTP API: strict (unknown fields refused) and bounded.

A request names a workflow registered in Settings.workflows, never code to import: no module
references, no custom evaluators, no runtime environments (which install packages). Bodies are
also capped in bytes (Settings.api_max_body_bytes) before they are parsed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import Field, field_validator

from wtb_ray.batch.fields import IgnorePattern, NoNul, Strict, ignore_needs_workspace
from wtb_ray.batch.spec import Evaluator

NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=f"^{NAME.pattern}$")]
Text = Annotated[str, Field(max_length=200), NoNul]
# Only a lookup key into Settings.workflows (an allowlist): anything else is refused by name.
WorkflowName = Annotated[str, Field(min_length=1, max_length=100)]
MAX_CASES = 10_000
# Ids are BIGINT columns: a larger number would reach the database and fail there, not here.
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
# Batch and execution ids as they appear in a path: anything else cannot name a row.
IdPath = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")]
# A checkpoint id in a query string (?at=, ?a=, ?b=).
RowIdQuery = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]
# An id in a query string (batch_id=, execution_id=): ids are letters and digits.
IdQuery = Annotated[str | None, Query(max_length=32, pattern=r"^[A-Za-z0-9]+$")]


class CaseIn(Strict):
    id: Annotated[str, Field(min_length=1, max_length=200), NoNul]
    input: dict[str, Any] = Field(default_factory=dict)
    expected: dict[str, Any] = Field(default_factory=dict)


class EvaluatorIn(Evaluator):
    """A built-in evaluator (custom ones name code, which a request may not)."""

    type: Literal["exact", "contains", "regex", "numeric", "json_field", "latency",
                  "node_count", "usage"]
    ref: None = None


class BatchIn(Strict):
    workflow: WorkflowName
    name: Text | None = None
    variants: dict[Name, Annotated[list[Name], Field(min_length=1, max_length=50)]] | None = (
        Field(default=None, max_length=50))
    combinations: list[dict[Name, Name]] | None = Field(default=None, max_length=1000)
    cases: list[CaseIn] = Field(min_length=1, max_length=MAX_CASES)
    evaluators: list[EvaluatorIn] = Field(default_factory=list, max_length=50)
    repeats: int = Field(default=1, ge=1, le=100)
    parallelism: int = Field(default=2, ge=1, le=256)
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=20)
    chunk_size: int = Field(default=16, ge=1, le=1000)
    workspace: bool = False  # a directory the server makes for each cell (see ExecutionIn)
    workspace_ignore: list[IgnorePattern] = Field(default_factory=list, max_length=50)
    _ignore_needs_workspace = field_validator("workspace_ignore")(ignore_needs_workspace)


class ExecutionIn(Strict):
    workflow: WorkflowName
    input: dict[str, Any] = Field(default_factory=dict)
    variants: dict[Name, Name] = Field(default_factory=dict, max_length=100)
    break_before: list[Name] = Field(default_factory=list, max_length=100)
    break_after: list[Name] = Field(default_factory=list, max_length=100)
    labels: dict[Name, Text] = Field(default_factory=dict, max_length=50)
    # A directory of files for the run, made by the server under its WTB_HOME (never a path
    # the request names: that would let a client choose where the server writes).
    workspace: bool = False
    workspace_ignore: list[IgnorePattern] = Field(default_factory=list, max_length=50)
    _ignore_needs_workspace = field_validator("workspace_ignore")(ignore_needs_workspace)


class ResumeIn(Strict):
    patch: dict[str, Any] | None = None
    variants: dict[Name, Name] = Field(default_factory=dict, max_length=100)
    workspace_edits: Literal["keep", "discard"] | None = Field(
        None, description="Hand edits to a paused run's workspace: go on from them (keep) or "
                          "put back its head's files (discard). Without it they are refused.")


class RollbackIn(Strict):
    to: int | str = Field(
        description="A checkpoint id, or a node name: the point just before it last ran.")
    workspace_edits: Literal["discard"] | None = Field(
        None, description="Hand edits to a paused or completed run's workspace: put back the "
                          "target's files over them. Without it they are refused.")

    @field_validator("to")
    @classmethod
    def _target(cls, value: int | str) -> int | str:
        # Checked here rather than per union member, so an error names "to" alone.
        if isinstance(value, int) and not 1 <= value <= MAX_ROW_ID:
            raise ValueError(f"a checkpoint id is an integer from 1 to {MAX_ROW_ID}")
        if isinstance(value, str) and not NAME.fullmatch(value):
            raise ValueError("a node name is 1-100 letters, digits, '_', '.' or '-'")
        return value


class ForkIn(Strict):
    at: RowId | None = None
    patch: dict[str, Any] | None = None
    variants: dict[Name, Name] = Field(default_factory=dict, max_length=100)
    run: bool = True
