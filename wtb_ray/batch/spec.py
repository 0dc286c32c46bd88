"""Batch specs: which workflow, which variant combinations, which cases, how to score them.

A spec is a YAML or JSON file, or a Python object. It is checked completely before anything
runs; an error names the field path and the reason.

    workflow: wtb_ray.examples.rag:workflow
    variants: {retrieve: [default, bm25], answer: [default, lead]}   # a matrix, or
    # combinations: [{retrieve: bm25, answer: lead}, ...]            # an explicit list
    cases: cases.jsonl          # or inline: [{id: c1, input: {...}, expected: {...}}]
    evaluators: [{type: contains, key: answer, expected: answer_contains}, {type: latency}]
    repeats: 1
    parallelism: 2
    runtime_env: {"answer=lead": {env_vars: {MODEL: small}}}
    timeout_s: 120
    max_attempts: 3
    webhook: {url: "https://ci.example.com/wtb", secret: "...", events: ["batch.*"]}
    workspace: true             # each cell's files follow its checkpoints (ctx.workspace)
    workspace_ignore: ["*.log"]
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from wtb_ray.batch.fields import (
    IgnorePattern,
    NoNul,
    Strict,
    check_pattern,
    ignore_needs_workspace,
)
from wtb_ray.domain.errors import InvalidInput

MAX_CASES = 100_000
MAX_CELLS = 200_000
_ENV_KEYS = {"env_vars", "pip", "uv", "working_dir", "py_modules", "conda", "container",
             "excludes", "config"}


class Case(Strict):
    id: Annotated[str, Field(min_length=1, max_length=200), NoNul]
    input: dict[str, Any] = Field(default_factory=dict)
    expected: dict[str, Any] = Field(default_factory=dict)


class Evaluator(Strict):
    """One scorer. ``type`` picks a built-in, or ``custom`` with ``ref`` = package.module:fn.

    ``expected`` names the case field holding the expected value (default: same as ``key``);
    ``value`` gives it literally instead.
    """

    type: Literal["exact", "contains", "regex", "numeric", "json_field", "latency",
                  "node_count", "usage", "custom"]
    name: str | None = Field(default=None, max_length=100)
    key: str | None = Field(default=None, max_length=200)
    path: str | None = Field(default=None, max_length=500)
    expected: str | None = Field(default=None, max_length=200)
    value: Any = None
    pattern: str | None = Field(default=None, max_length=2000)
    tolerance: float = Field(default=1e-9, ge=0)
    relative: bool = False
    ignore_case: bool = True
    metric: str | None = Field(default=None, max_length=100)
    max: float | None = None
    ref: str | None = Field(default=None, max_length=300)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            check_pattern(value)
        return value

    @model_validator(mode="after")
    def _needs(self) -> Evaluator:
        required = {"exact": ["key"], "contains": ["key"], "regex": ["key"],
                    "numeric": ["key"], "json_field": ["key", "path"], "usage": ["metric"],
                    "custom": ["ref"]}.get(self.type, [])
        missing = [f for f in required if getattr(self, f) in (None, "")]
        if missing:
            raise ValueError(f"a {self.type!r} evaluator needs {', '.join(missing)}")
        if self.type == "regex" and self.pattern is None and self.expected is None:
            raise ValueError("a 'regex' evaluator needs pattern (or expected: a case field)")
        return self

    @property
    def label(self) -> str:
        return self.name or ":".join(x for x in (self.type, self.key or self.metric) if x)


class Webhook(Strict):
    """Where the relay POSTs the batch's and its executions' events, signed with ``secret``
    (or the relay's WTB_WEBHOOK_SECRET). ``events`` filters by kind (fnmatch patterns)."""

    url: Annotated[str, Field(min_length=1, max_length=2000), NoNul]
    secret: Annotated[str, NoNul] | None = Field(default=None, min_length=16, max_length=500,
                                                 repr=False)
    events: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=50)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must name a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (they would be logged): use secret")
        return value


class BatchSpec(Strict):
    workflow: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                                   max_length=300)]
    name: Annotated[str, NoNul] | None = Field(default=None, max_length=200)
    variants: dict[str, list[str]] | None = None
    combinations: list[dict[str, str]] | None = None
    cases: list[Case] | str
    evaluators: list[Evaluator] = Field(default_factory=list)
    repeats: int = Field(default=1, ge=1, le=1000)
    parallelism: int = Field(default=2, ge=1, le=1024)
    runtime_env: dict[str, dict[str, Any]] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    chunk_size: int = Field(default=16, ge=1, le=1000)
    webhook: Webhook | None = None
    # Each cell gets a directory of its own under WTB_HOME/workspaces/<execution id> (never a
    # path: cells must not share one), recorded at its every checkpoint.
    workspace: bool = False
    workspace_ignore: list[IgnorePattern] = Field(default_factory=list, max_length=50)

    _ignore_needs_workspace = field_validator("workspace_ignore")(ignore_needs_workspace)

    @field_validator("variants")
    @classmethod
    def _variant_lists(cls, value: dict[str, list[str]] | None):
        for node, names in (value or {}).items():
            if not names:
                raise ValueError(f"node {node!r} lists no variants")
            if len(set(names)) != len(names):
                raise ValueError(f"node {node!r} lists a variant twice")
        return value

    @field_validator("runtime_env")
    @classmethod
    def _env_keys(cls, value: dict[str, dict[str, Any]]):
        for where, env in value.items():
            node, sep, variant = where.partition("=")
            if not sep or not node or not variant:
                raise ValueError(f"key {where!r} must be NODE=VARIANT")
            unknown = set(env) - _ENV_KEYS
            if unknown:
                raise ValueError(f"{where}: unknown runtime_env field(s) {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _one_matrix(self) -> BatchSpec:
        if self.variants is not None and self.combinations is not None:
            raise ValueError("give variants (a matrix) or combinations (a list), not both")
        if isinstance(self.cases, list):
            if not self.cases:
                raise ValueError("cases: at least one case is needed")
            if len(self.cases) > MAX_CASES:
                raise ValueError(f"cases: at most {MAX_CASES}")
            seen: set[str] = set()
            for case in self.cases:
                if case.id in seen:
                    raise ValueError(f"cases: id {case.id!r} appears twice")
                seen.add(case.id)
            self._check_case_patterns()
        return self

    def _check_case_patterns(self) -> None:
        """Patterns a regex evaluator takes from the cases are checked now, not when the
        first cell is scored."""
        fields = {ev.expected for ev in self.evaluators
                  if ev.type == "regex" and ev.pattern is None and ev.expected}
        for i, case in enumerate(self.cases):
            for name in sorted(fields & case.expected.keys()):
                value = case.expected[name]
                where = f"cases[{i}].expected.{name} (case {case.id!r})"
                if not isinstance(value, str):
                    raise ValueError(f"{where}: a regex evaluator needs a string pattern, "
                                     f"not {type(value).__name__}")
                try:
                    check_pattern(value)
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None

    # -- derived ----------------------------------------------------------------------

    def choices(self) -> list[dict[str, str]]:
        """Every variant combination, in a stable order (default only if none is given)."""
        if self.combinations is not None:
            return [dict(c) for c in self.combinations] or [{}]
        if not self.variants:
            return [{}]
        nodes = sorted(self.variants)
        return [dict(zip(nodes, combo, strict=True))
                for combo in itertools.product(*(self.variants[n] for n in nodes))]

    def runtime_env_for(self, choice: dict[str, str]) -> dict[str, Any]:
        """The runtime_env of a combination: its variants' envs merged (conflicts refused)."""
        merged: dict[str, Any] = {}
        for node, variant in sorted(choice.items()):
            env = self.runtime_env.get(f"{node}={variant}")
            for field, value in (env or {}).items():
                if field == "env_vars":
                    for k, v in value.items():
                        if merged.get("env_vars", {}).get(k, v) != v:
                            raise InvalidInput(f"runtime_env: env var {k!r} differs between "
                                               f"variants of combination {choice}")
                        merged.setdefault("env_vars", {})[k] = v
                elif field in ("pip", "uv") and isinstance(value, list):
                    merged[field] = sorted({*merged.get(field, []), *value})
                elif field in merged and merged[field] != value:
                    raise InvalidInput(f"runtime_env: {field!r} differs between variants of "
                                       f"combination {choice}")
                else:
                    merged[field] = value
        return merged


_UNION_TAGS = {"str", "list[Case]"}  # pydantic names the union branch in the location


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if part in _UNION_TAGS:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "spec"


def parse_spec(data: Any, *, base_dir: Path | None = None) -> BatchSpec:
    """Validate a spec mapping; a string ``cases`` is a JSONL file (relative to base_dir)."""
    try:
        spec = BatchSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidInput(f"batch spec: {_field_path(first['loc'])}: {message}") from None
    if isinstance(spec.cases, str):
        path = Path(spec.cases)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        cases = load_cases(path)
        spec = parse_spec({**spec.model_dump(), "cases": cases})
    return spec


def load_cases(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InvalidInput(f"batch spec: cases: cannot read {str(path)!r}: {exc.strerror}"
                           ) from None
    cases = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            cases.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"batch spec: cases: {path.name} line {number} is not valid JSON:"
                               f" {exc.msg}") from None
    return cases


def load_spec(path: str | Path) -> BatchSpec:
    """Read a YAML or JSON spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read batch spec {str(path)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"batch spec {path.name} is not valid "
                           f"{'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"batch spec {path.name} must be a mapping at the top level")
    return parse_spec(data, base_dir=path.parent)
