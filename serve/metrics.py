"""/metrics content: request counts (this replica), and, read at scrape time, batches and
executions by status, the outbox backlog, and node / checkpoint-write latency histograms
(reported by the executors to the orchestrator, plus this replica's own writes)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import ray
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from wtb_ray.latency import BUCKETS_MS, Latency
from wtb_ray.storage import queries

log = logging.getLogger(__name__)


def histogram(name: str, doc: str, snapshot: dict[str, Any]) -> HistogramMetricFamily:
    """Seconds-based Prometheus histogram from millisecond bucket counts."""
    buckets, running = [], 0
    for bound, count in zip([*BUCKETS_MS, float("inf")], snapshot["counts"], strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else str(bound / 1000), running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=snapshot["sum_ms"] / 1000)


class StoreCollector(Collector):
    def __init__(self, api: Any) -> None:
        self.api = api

    def collect(self) -> Iterator[Any]:
        store = self.api.bench.store
        for table in ("batches", "executions"):
            family = GaugeMetricFamily(f"wtb_{table}", f"{table.capitalize()} by status",
                                       labels=["status"])
            for status, n in sorted(store.run(queries.status_counts, table).items()):
                family.add_metric([status], n)
            yield family
        pending, oldest = store.run(queries.outbox_backlog)
        yield GaugeMetricFamily("wtb_outbox_pending", "Events not yet delivered", value=pending)
        yield GaugeMetricFamily("wtb_outbox_lag_seconds", "Age of the oldest undelivered event",
                                value=max(0.0, time.time() - oldest) if oldest else 0.0)
        node, write = self._latency()
        yield histogram("wtb_node_duration_seconds", "Node run time", node)
        yield histogram("wtb_checkpoint_write_seconds", "Checkpoint commit time", write)

    def _latency(self) -> tuple[dict[str, Any], dict[str, Any]]:
        node, write = Latency(), Latency()
        write.add(self.api.bench.store.write_latency.peek())  # this replica's own writes
        try:
            reported = ray.get(self.api.orchestrator().latencies.remote(), timeout=2)
            node.add(reported["node"])
            write.add(reported["write"])
        except Exception:  # the orchestrator is restarting: serve what we have
            log.warning("latency histograms without the orchestrator's share", exc_info=True)
        return node.peek(), write.peek()
