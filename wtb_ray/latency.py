"""Latency histograms (node runs, checkpoint writes) kept where the work happens and
carried to wherever metrics are served (executors report them with each chunk)."""

from __future__ import annotations

import bisect
import threading
from typing import Any

BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class Latency:
    """Counts per bucket (upper bounds in ms, then +Inf), a sum and a count; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1
            self.sum_ms += ms

    def take(self) -> dict[str, Any]:
        """What was observed since the last take (a delta to add elsewhere)."""
        with self._lock:
            snapshot = {"counts": list(self.counts), "sum_ms": self.sum_ms}
            self._reset()
        return snapshot

    def add(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            for i, n in enumerate(snapshot["counts"]):
                self.counts[i] += n
            self.sum_ms += snapshot["sum_ms"]

    def peek(self) -> dict[str, Any]:
        with self._lock:
            return {"counts": list(self.counts), "sum_ms": self.sum_ms}
