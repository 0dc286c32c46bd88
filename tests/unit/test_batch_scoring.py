import pytest

from wtb_ray.batch import evaluators
from wtb_ray.batch.spec import Case, Evaluator
from wtb_ray.batch.stats import CellResult, leaderboard, percentile

FACTS = evaluators.RunFacts("completed", 12.5, 4, {"tokens": 30, "cost": 0.2})


def run(spec, state, expected=None, facts=FACTS):
    return evaluators.score([Evaluator(**spec)], state, Case(id="c", expected=expected or {}),
                            facts)


@pytest.mark.parametrize("spec, state, expected, passed", [
    ({"type": "exact", "key": "a"}, {"a": 3}, {"a": 3}, True),
    ({"type": "exact", "key": "a"}, {"a": 3}, {"a": 4}, False),
    ({"type": "exact", "key": "a", "value": [1, 2]}, {"a": [1, 2]}, {}, True),
    ({"type": "contains", "key": "t", "expected": "want"}, {"t": "Hello World"},
     {"want": "world"}, True),
    ({"type": "contains", "key": "t", "expected": "want", "ignore_case": False},
     {"t": "Hello World"}, {"want": "world"}, False),
    ({"type": "regex", "key": "t", "pattern": r"\d{3}"}, {"t": "code 404"}, {}, True),
    ({"type": "regex", "key": "t", "pattern": r"^\d+$"}, {"t": "code 404"}, {}, False),
    ({"type": "numeric", "key": "v", "tolerance": 0.1}, {"v": 1.05}, {"v": 1.0}, True),
    ({"type": "numeric", "key": "v", "tolerance": 0.01}, {"v": 1.05}, {"v": 1.0}, False),
    ({"type": "numeric", "key": "v", "tolerance": 0.1, "relative": True}, {"v": 105},
     {"v": 100}, True),
    ({"type": "numeric", "key": "v"}, {"v": "not a number"}, {"v": 1}, False),
    ({"type": "json_field", "key": "r", "path": "items.1.name"},
     {"r": {"items": [{"name": "a"}, {"name": "b"}]}}, {"r": "b"}, True),
    ({"type": "json_field", "key": "r", "path": "items.9"}, {"r": {"items": []}}, {"r": 1},
     False),
    ({"type": "exact", "key": "missing"}, {}, {"missing": 1}, False),
    ({"type": "latency", "max": 20}, {}, {}, True),
    ({"type": "latency", "max": 10}, {}, {}, False),
    ({"type": "node_count", "max": 3}, {}, {}, False),
    ({"type": "usage", "metric": "tokens", "max": 30}, {}, {}, True),
    ({"type": "custom", "ref": "tests.workflows:y_matches"}, {"y": 6}, {"ys": [6]}, True),
    ({"type": "custom", "ref": "tests.workflows:y_matches"}, {"y": 7}, {"ys": [6]}, False),
])
def test_built_in_evaluators(spec, state, expected, passed):
    assert run(spec, state, expected).passed is passed


def test_metrics_are_named_and_a_failed_run_never_passes():
    result = run({"type": "usage", "metric": "cost"}, {})
    assert result.metrics == {"cost": 0.2} and result.passed
    failed = evaluators.RunFacts("failed", 1.0, 1)
    assert not run({"type": "latency"}, {}, facts=failed).passed
    missing_expectation = run({"type": "exact", "key": "a"}, {"a": 1})
    assert missing_expectation.metrics == {} and missing_expectation.passed  # nothing to check


def cells(combo, outcomes, latency=1.0):
    return [CellResult(combo, f"case{i}", 0, "completed", ok, latency, {"score": float(ok)})
            for i, ok in enumerate(outcomes)]


def test_leaderboard_ranks_and_marks_significant_differences():
    results = (cells('{"v":"good"}', [True] * 20)
               + cells('{"v":"same"}', [True] * 19 + [False])
               + cells('{"v":"bad"}', [True] * 5 + [False] * 15, latency=3.0))
    rows = leaderboard(results)
    assert [r.variants["v"] for r in rows] == ["good", "same", "bad"]
    good, same, bad = rows
    assert good.vs_best is None and good.shared_cases == 20
    assert same.vs_best == pytest.approx(-0.05) and not same.significant
    assert bad.vs_best == pytest.approx(-0.75) and bad.significant
    assert bad.ci_low < -0.75 < bad.ci_high < 0 and bad.p50_ms == 3.0
    assert leaderboard(results)[2].ci_low == bad.ci_low  # seeded: same input, same answer


def test_ties_are_ordered_by_name_and_only_shared_cases_are_compared():
    rows = leaderboard(cells('{"v":"b"}', [True, False]) + cells('{"v":"a"}', [True, False])
                       + [CellResult('{"v":"c"}', "elsewhere", 0, "completed", True, 1.0)])
    assert [r.variants["v"] for r in rows] == ["c", "a", "b"]
    assert rows[1].shared_cases == 0 and rows[1].vs_best is None


def test_percentiles_interpolate():
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([5.0], 0.95) == 5.0


def test_a_regex_search_that_runs_too_long_fails_its_check_instead_of_holding_the_executor(
        monkeypatch):
    monkeypatch.setattr(evaluators, "REGEX_TIMEOUT_S", 0.05)
    spec = {"type": "regex", "key": "t", "pattern": r"(a|aa)+$"}  # exponential backtracking
    scored = run(spec, {"t": "a" * 40 + "b"})
    assert scored.checks["regex:t"] is False and scored.metrics["regex:t"] == 0.0
    assert run(spec, {"t": "aaaa"}).checks["regex:t"] is True  # the same pattern, a quick text
