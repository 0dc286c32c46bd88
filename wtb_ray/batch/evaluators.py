"""Evaluators: score one finished cell (final state, the case, facts about the run).

Each evaluator yields named metrics and, where it has a criterion, pass/fail. A cell passes
when its execution completed and every evaluator with a criterion passed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import regex

from wtb_ray.batch.spec import Case, Evaluator
from wtb_ray.domain.errors import InvalidInput

log = logging.getLogger(__name__)
_MISSING = object()
REGEX_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class RunFacts:
    """What the scorers may know about a run besides its state."""

    status: str
    latency_ms: float
    node_count: int
    usage: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Score:
    metrics: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


def _expected(ev: Evaluator, case: Case) -> Any:
    if ev.value is not None:
        return ev.value
    return case.expected.get(ev.expected or ev.key or "", _MISSING)


def _dig(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(
                part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _text(value: Any, ignore_case: bool) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text.lower() if ignore_case else text


def _compare(ev: Evaluator, state: Mapping[str, Any], case: Case) -> bool | None:
    """True/False for a comparison evaluator; None when the case gives nothing to compare."""
    expected = _expected(ev, case)
    if expected is _MISSING:
        return None
    actual = state.get(ev.key, _MISSING) if ev.key else _MISSING
    if actual is _MISSING:
        return False
    if ev.type == "exact":
        return actual == expected
    if ev.type == "contains":
        return _text(expected, ev.ignore_case) in _text(actual, ev.ignore_case)
    if ev.type == "numeric":
        try:
            a, e = float(actual), float(expected)
        except (TypeError, ValueError):
            return False
        allowed = ev.tolerance * abs(e) if ev.relative else ev.tolerance
        return math.isclose(a, e, rel_tol=0, abs_tol=allowed) or a == e
    if ev.type == "json_field":
        return _dig(actual, ev.path or "") == expected
    raise AssertionError(ev.type)


def _regex(ev: Evaluator, state: Mapping[str, Any], case: Case) -> bool:
    """Whether the pattern matches; a search running past REGEX_TIMEOUT_S fails the check
    (a pattern from an HTTP request must not hold an executor)."""
    pattern = ev.pattern if ev.pattern is not None else case.expected.get(ev.expected or "")
    if pattern is None:
        return False
    flags = regex.IGNORECASE if ev.ignore_case else 0
    try:
        return regex.search(str(pattern), _text(state.get(ev.key, ""), False), flags,
                            timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        log.warning("regex evaluator %s: %r ran past %s s on case %r; check failed",
                    ev.label, pattern, REGEX_TIMEOUT_S, case.id)
        return False


def _limit(score: Score, name: str, value: float, maximum: float | None) -> None:
    score.metrics[name] = value
    if maximum is not None:
        score.checks[name] = value <= maximum


def load_custom(ref: str) -> Callable[..., Any]:
    from wtb_ray.engine.loader import load_object

    fn = load_object(ref, "evaluator")
    if not callable(fn):
        raise InvalidInput(f"evaluator {ref!r} is not callable")
    return fn


def score(evaluators: list[Evaluator], state: Mapping[str, Any], case: Case,
          facts: RunFacts) -> Score:
    """Run every evaluator over one cell."""
    result = Score()
    result.checks["completed"] = facts.status == "completed"
    for ev in evaluators:
        label = ev.label
        if ev.type in ("exact", "contains", "numeric", "json_field"):
            ok = _compare(ev, state, case)
            if ok is not None:
                result.metrics[label] = float(ok)
                result.checks[label] = ok
        elif ev.type == "regex":
            ok = _regex(ev, state, case)
            result.metrics[label], result.checks[label] = float(ok), ok
        elif ev.type == "latency":
            _limit(result, ev.name or "latency_ms", facts.latency_ms, ev.max)
        elif ev.type == "node_count":
            _limit(result, ev.name or "nodes", float(facts.node_count), ev.max)
        elif ev.type == "usage":
            _limit(result, ev.name or ev.metric, float(facts.usage.get(ev.metric, 0.0)), ev.max)
        elif ev.type == "custom":
            _custom(ev, state, case, facts, result)
    return result


def _custom(ev: Evaluator, state: Mapping[str, Any], case: Case, facts: RunFacts,
            result: Score) -> None:
    """A custom evaluator returns a bool, a number, or {"passed": bool, metric: number...}."""
    outcome = load_custom(ev.ref)(state, case, facts)
    label = ev.label if ev.name else ev.ref.rsplit(":", 1)[-1]
    if isinstance(outcome, bool):
        result.metrics[label], result.checks[label] = float(outcome), outcome
    elif isinstance(outcome, (int, float)):
        result.metrics[label] = float(outcome)
    elif isinstance(outcome, Mapping):
        for k, v in outcome.items():
            if k == "passed":
                result.checks[label] = bool(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                result.metrics[f"{label}.{k}"] = float(v)
    else:
        raise InvalidInput(f"evaluator {ev.ref!r} returned {type(outcome).__name__}; return a "
                           "bool, a number or a mapping")
