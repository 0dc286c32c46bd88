"""Batch and execution progress as Ray metrics (the cluster's Prometheus endpoint)."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

STATUSES = ("pending", "running", "retrying", "completed", "failed", "cancelled", "paused")
ACTIVE = ("pending", "running", "retrying", "paused")


class BatchMetrics:
    def __init__(self) -> None:
        self.cells = Gauge("wtb_batch_cells", description="Cells of a batch by status",
                           tag_keys=("batch", "status"))
        self.finished = Counter("wtb_executions_finished_total",
                                description="Batch executions that reached a final status",
                                tag_keys=("status",))
        self.active = Gauge("wtb_batches_active", description="Batches being run")
        self._seen: dict[str, dict[str, int]] = {}

    def observe(self, batch_id: str, combinations: dict[str, dict[str, int]]) -> None:
        totals = {s: 0 for s in STATUSES}
        for counts in combinations.values():
            for status, n in counts.items():
                totals[status] = totals.get(status, 0) + n
        seen = self._seen.setdefault(batch_id, {})
        for status, n in totals.items():
            self.cells.set(n, tags={"batch": batch_id, "status": status})
            if status in ("completed", "failed", "cancelled") and n > seen.get(status, 0):
                self.finished.inc(n - seen.get(status, 0), tags={"status": status})
            seen[status] = n

    def forget(self, batch_id: str) -> None:
        """A batch no longer driven: once none of its cells can still finish (paused ones
        can, when resumed), drop what was kept to count them."""
        seen = self._seen.get(batch_id)
        if seen is not None and not any(seen.get(s, 0) for s in ACTIVE):
            del self._seen[batch_id]

    def set_active(self, n: int) -> None:
        self.active.set(n)
