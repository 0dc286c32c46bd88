"""Aggregation per variant combination and the leaderboard.

Combinations are ranked by pass rate (ties by name, so the order never depends on timing).
Each is compared with the best over the cases both ran (paired): the per-case difference in
pass rate, with a 95% bootstrap confidence interval; a difference whose interval excludes zero
is marked significant. The bootstrap is seeded, so the same results give the same leaderboard.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class CellResult:
    combo: str  # canonical JSON of the variant choice
    case_id: str
    repeat: int
    status: str
    passed: bool
    latency_ms: float | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    rank: int
    combo: str
    variants: dict[str, str]
    cells: int
    completed: int
    failed: int
    pass_rate: float
    p50_ms: float | None
    p95_ms: float | None
    metrics: dict[str, float]
    vs_best: float | None = None  # mean per-case difference in pass rate (this - best)
    ci_low: float | None = None
    ci_high: float | None = None
    significant: bool = False
    shared_cases: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def combo_key(choice: dict[str, str]) -> str:
    return json.dumps(choice, sort_keys=True, separators=(",", ":"))


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in [0, 1])."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _per_case(cells: list[CellResult]) -> dict[str, float]:
    by_case: dict[str, list[float]] = defaultdict(list)
    for c in cells:
        by_case[c.case_id].append(1.0 if c.passed else 0.0)
    return {case: sum(v) / len(v) for case, v in by_case.items()}


def paired_bootstrap(diffs: list[float], seed: str) -> tuple[float, float]:
    """95% CI of the mean of ``diffs`` by resampling cases."""
    rng = random.Random(int(hashlib.blake2b(seed.encode(), digest_size=8).hexdigest(), 16))
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(BOOTSTRAP_SAMPLES))
    return means[int(0.025 * BOOTSTRAP_SAMPLES)], means[int(0.975 * BOOTSTRAP_SAMPLES) - 1]


def leaderboard(results: Iterable[CellResult]) -> list[Row]:
    by_combo: dict[str, list[CellResult]] = defaultdict(list)
    for r in results:
        by_combo[r.combo].append(r)
    rows = []
    for combo, cells in by_combo.items():
        latencies = [c.latency_ms for c in cells if c.latency_ms is not None]
        names = sorted({m for c in cells for m in c.metrics})
        means = {m: round(statistics.fmean(c.metrics[m] for c in cells if m in c.metrics), 6)
                 for m in names}
        rows.append(Row(
            rank=0, combo=combo, variants=json.loads(combo), cells=len(cells),
            completed=sum(c.status == "completed" for c in cells),
            failed=sum(c.status == "failed" for c in cells),
            pass_rate=round(sum(c.passed for c in cells) / len(cells), 6),
            p50_ms=percentile(latencies, 0.5), p95_ms=percentile(latencies, 0.95),
            metrics=means))
    rows.sort(key=lambda r: (-r.pass_rate, r.combo))
    for i, row in enumerate(rows, 1):
        row.rank = i
    if rows:
        best = _per_case(by_combo[rows[0].combo])
        for row in rows[1:]:
            mine = _per_case(by_combo[row.combo])
            shared = sorted(set(best) & set(mine))
            row.shared_cases = len(shared)
            if not shared:
                continue
            diffs = [mine[c] - best[c] for c in shared]
            row.vs_best = round(statistics.fmean(diffs), 6)
            low, high = paired_bootstrap(diffs, rows[0].combo + row.combo)
            row.ci_low, row.ci_high = round(low, 6), round(high, 6)
            row.significant = high < 0 or low > 0
        rows[0].shared_cases = len(best)
    return rows
