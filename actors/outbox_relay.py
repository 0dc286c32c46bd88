"""OutboxRelay: the named, restartable actor that delivers outbox events.

It builds a relay from Settings (wtb_ray/outbox/relay.py: claims, consumers, dead letters)
and runs it on a thread of its own; the consumers are the event feed actor, batch webhooks
and any configured in WTB_OUTBOX_CONSUMERS. Its counts go to Ray metrics. A restart (Ray
restarts it after a crash) builds everything again; events a dead relay had claimed are
delivered again once its claim ends, and every consumer applies them once.
"""

from __future__ import annotations

import threading
from typing import Any

import ray
from ray.util.metrics import Counter, Gauge, Histogram

from actors import event_feed
from actors.restart import open_bench
from wtb_ray.config import Settings
from wtb_ray.outbox.metrics import RelayMetrics
from wtb_ray.outbox.relay import build

NAMESPACE = "wtb"
LAG_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]


class RayRelayMetrics(RelayMetrics):
    def __init__(self) -> None:
        super().__init__()
        self._delivered = Counter("wtb_outbox_delivered_total",
                                  description="Outbox events delivered, by kind",
                                  tag_keys=("kind",))
        self._dead = Counter("wtb_outbox_dead_total",
                             description="Outbox events moved to the dead-letter state",
                             tag_keys=("kind",))
        self._lag = Histogram("wtb_outbox_delivery_lag_seconds",
                              description="From an event's commit to its delivery",
                              boundaries=LAG_BOUNDARIES)
        self._pending = Gauge("wtb_relay_pending_events",
                              description="Undelivered outbox events (as the relay last saw)")
        self._oldest = Gauge("wtb_relay_oldest_pending_seconds",
                             description="Age of the oldest undelivered outbox event")

    def on_delivered(self, moved: list[Any], now: float) -> None:
        for row in moved:
            self._delivered.inc(1, tags={"kind": row.kind})
            self._lag.observe(max(0.0, now - row.created_at))

    def on_dead(self, moved: list[Any]) -> None:
        for row in moved:
            self._dead.inc(1, tags={"kind": row.kind})

    def on_backlog(self, pending: int, oldest_lag_s: float) -> None:
        self._pending.set(pending)
        self._oldest.set(oldest_lag_s)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class OutboxRelay:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)
        self.bench = open_bench(self.settings)
        feed = event_feed.get_or_create(self.settings)
        self.relay = build(self.settings, self.bench.store, metrics=RayRelayMetrics(),
                           feed_publish=lambda events: ray.get(feed.publish.remote(events),
                                                               timeout=30))
        self.thread = threading.Thread(target=self.relay.run, name="wtb-outbox-relay",
                                       daemon=True)
        self.thread.start()

    def wake(self) -> bool:
        """Look for events now rather than at the next poll."""
        self.relay.wake()
        return True

    def stats(self) -> dict[str, Any]:
        return {"owner": self.relay.owner, "running": self.thread.is_alive(),
                **self.relay.metrics.snapshot()}


def get_or_create(settings: Settings) -> Any:
    """The cluster's outbox relay (named, detached, in namespace "wtb")."""
    return OutboxRelay.options(name=settings.outbox_relay_name, namespace=NAMESPACE,
                               lifetime="detached", get_if_exists=True
                               ).remote(settings.for_actors())
