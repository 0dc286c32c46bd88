"""The metrics consumer: events delivered by kind, dead letters, delivery lag.

It counts an event when this relay's settle moves the event's row to delivered (or dead).
A row moves there once, ever, and the database says which rows a settle moved (RETURNING), so
an event delivered twice (a relay that died before settling, a settle retried after a lost
connection) is still counted once: the counters are idempotent by event id without keeping
ids anywhere. The Ray actor subclasses this to export the same figures as Ray metrics.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any


class RelayMetrics:
    def __init__(self, recent: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.delivered_by_kind: Counter[str] = Counter()
        self.dead_by_kind: Counter[str] = Counter()
        self.lags: deque[float] = deque(maxlen=recent)  # seconds from written to delivered
        self.pending = 0
        self.oldest_lag_s = 0.0

    def delivered(self, moved: list[Any], now: float) -> None:
        with self._lock:
            for row in moved:
                self.delivered_by_kind[row.kind] += 1
                self.lags.append(max(0.0, now - row.created_at))
        self.on_delivered(moved, now)

    def dead(self, moved: list[Any]) -> None:
        with self._lock:
            self.dead_by_kind.update(row.kind for row in moved)
        self.on_dead(moved)

    def backlog(self, pending: int, oldest_lag_s: float) -> None:
        self.pending, self.oldest_lag_s = pending, oldest_lag_s
        self.on_backlog(pending, oldest_lag_s)

    # Hooks for exporters (the Ray actor's metrics); the counts above are kept regardless.
    def on_delivered(self, moved: list[Any], now: float) -> None:
        pass

    def on_dead(self, moved: list[Any]) -> None:
        pass

    def on_backlog(self, pending: int, oldest_lag_s: float) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lags = sorted(self.lags)
        p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))] if lags else 0.0
        return {"delivered": sum(self.delivered_by_kind.values()),
                "delivered_by_kind": dict(self.delivered_by_kind),
                "dead": sum(self.dead_by_kind.values()), "dead_by_kind": dict(self.dead_by_kind),
                "pending": self.pending, "oldest_lag_s": round(self.oldest_lag_s, 3),
                "recent_p95_lag_s": round(p95, 4)}
