"""The outbox relay: claim undelivered events, hand them to consumers, settle the rows.

One round (``run_once``): claim up to ``batch_size`` rows in a short transaction (see
storage/outbox_sql.py for how claims keep each aggregate in order and two relays apart),
deliver them to every consumer that wants them, then settle in another short transaction:

* an event every consumer applied is delivered;
* the first event of an aggregate that a consumer failed is retried after a backoff that
  doubles with each failure, and after ``max_attempts`` failures it is dead (a dead letter:
  ``wtb outbox retry-dead`` gives it back); the rest of that aggregate waits for it;
* consumers that applied an event which is not yet delivered are recorded, so its retry goes
  only to the others.

On SQLite only the relay holding a lease claims (one writer is all SQLite has anyway); on
PostgreSQL any number of relays run at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from wtb_ray.engine.lease import new_owner
from wtb_ray.outbox.consumers import Consumer, Envelope, FeedConsumer, load_extra
from wtb_ray.outbox.metrics import RelayMetrics
from wtb_ray.outbox.webhooks import WebhookConsumer
from wtb_ray.storage import outbox_sql, queries
from wtb_ray.storage.outbox_sql import Settlement

log = logging.getLogger(__name__)
LEASE = "outbox-relay"
BACKLOG_EVERY_S = 2.0


@dataclass(frozen=True)
class RelayPolicy:
    batch_size: int = 500
    claim_s: float = 30.0  # how long a claim holds its rows (longer than any delivery)
    max_attempts: int = 8  # failed deliveries before a row is dead
    backoff_s: float = 1.0  # delay before the first retry; it doubles each time
    backoff_max_s: float = 300.0
    poll_interval_s: float = 0.2  # how often an idle relay looks for new events

    @classmethod
    def from_settings(cls, settings: Any) -> RelayPolicy:
        return cls(settings.outbox_batch_size, settings.outbox_claim_seconds,
                   settings.outbox_max_attempts, settings.outbox_backoff_seconds,
                   settings.outbox_backoff_max_seconds, settings.outbox_poll_interval_seconds)

    def retry_delay(self, failures: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))


class Relay:
    def __init__(self, store: Any, consumers: list[Consumer], *,
                 policy: RelayPolicy | None = None, metrics: RelayMetrics | None = None,
                 exclusive: bool | None = None, owner: str | None = None) -> None:
        self.store = store
        self.consumers = consumers
        self.policy = policy or RelayPolicy()
        self.metrics = metrics or RelayMetrics()
        self.exclusive = store.dialect == "sqlite" if exclusive is None else exclusive
        self.owner = owner or new_owner()
        self._lease_until = 0.0
        self._standby_until = 0.0
        self._backlog_at = 0.0
        self._stop = threading.Event()
        self._nudge = threading.Event()

    # -- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Relay until ``stop()``: at once while there is a backlog, else every poll interval
        (or when ``wake()`` is called). Database errors are logged and retried."""
        failures = 0
        while not self._stop.is_set():
            try:
                claimed = self.run_once()
                failures = 0
            except Exception:
                failures += 1
                log.exception("outbox relay round failed (%d in a row)", failures)
                self._stop.wait(min(30.0, self.policy.poll_interval_s * 2 ** failures))
                continue
            if claimed < self.policy.batch_size:
                self._nudge.wait(self.policy.poll_interval_s)
                self._nudge.clear()

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called (``run`` returns after its current round)."""
        return self._stop.is_set()

    def wake(self) -> None:
        self._nudge.set()

    def drain(self, max_rounds: int = 1_000_000) -> int:
        """Run rounds until one finds nothing to claim; returns the events claimed."""
        total = 0
        for _ in range(max_rounds):
            claimed = self.run_once()
            if not claimed:
                break
            total += claimed
        return total

    def close(self) -> None:
        self.stop()
        if self.exclusive and self._lease_until > time.time():
            self.store.run(outbox_sql.drop_lease, LEASE, self.owner, write=True)
        for consumer in self.consumers:
            getattr(consumer, "close", lambda: None)()

    @property
    def standby(self) -> bool:
        """True while another relay holds the SQLite lease: this one claims nothing."""
        return self.exclusive and self._lease_until <= time.time()

    # -- one round --------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim, deliver and settle one batch of events; returns how many were claimed."""
        now = time.time()
        if self.exclusive and not self._hold_lease(now):
            return 0
        until = now + self.policy.claim_s
        claimed, applied = self.store.run(outbox_sql.claim, self.owner, now, until,
                                          self.policy.batch_size, write=True)
        if not claimed:
            self._observe_backlog(now)
            return 0
        events = [Envelope.from_row(r) for r in claimed]
        # Leave a margin: what is settled after the claim ends may be claimed by another.
        deadline = until - min(5.0, self.policy.claim_s / 3)
        wanted, done, errors = self._deliver(events, applied, deadline)
        settlement = self._settlement(events, wanted, done, errors, applied, time.time())
        delivered, dead = self.store.run(outbox_sql.settle, self.owner, time.time(),
                                         settlement, write=True)
        self.metrics.delivered(delivered, time.time())
        if dead:
            self.metrics.dead(dead)
            log.warning("%d outbox event(s) are dead after %d attempts: %s", len(dead),
                        self.policy.max_attempts, ", ".join(str(r.id) for r in dead[:10]))
        self._observe_backlog(time.time())
        return len(claimed)

    def _deliver(self, events: list[Envelope], applied: dict[str, set[str]], deadline: float
                 ) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, list[str]]]:
        wanted: dict[str, set[str]] = defaultdict(set)
        done = {e.event_id: set(applied.get(e.event_id, ())) for e in events}
        errors: dict[str, list[str]] = defaultdict(list)
        for consumer in self.consumers:
            try:
                selected = consumer.select(events)
            except Exception as exc:  # it cannot even tell what it wants: all of it waits
                log.warning("outbox consumer %s failed to select events", consumer.name,
                            exc_info=True)
                for e in events:
                    wanted[e.event_id].add(consumer.name)
                    errors[e.event_id].append(f"{consumer.name}: {type(exc).__name__}: {exc}")
                continue
            for e in selected:
                wanted[e.event_id].add(consumer.name)
            # Each consumer gets every event it lacks, whatever another consumer made of it:
            # skipping one here would let this consumer apply its successors first.
            todo = [e for e in selected if consumer.name not in done[e.event_id]]
            if not todo:
                continue
            try:
                outcome = consumer.deliver(todo, deadline)
            except Exception as exc:
                log.warning("outbox consumer %s failed", consumer.name, exc_info=True)
                outcome = {e.event_id: f"{type(exc).__name__}: {exc}" for e in todo}
            for event_id, error in outcome.items():
                if error is None:
                    done[event_id].add(consumer.name)
                else:
                    errors[event_id].append(f"{consumer.name}: {error}")
        return wanted, done, errors

    def _settlement(self, events: list[Envelope], wanted: dict[str, set[str]],
                    done: dict[str, set[str]], errors: dict[str, list[str]],
                    applied: dict[str, set[str]], now: float) -> Settlement:
        s = Settlement()
        stalled: set[tuple[str, str]] = set()
        for e in events:  # in id order, so in order within each aggregate
            if e.aggregate not in stalled and wanted[e.event_id] <= done[e.event_id]:
                s.delivered.append(e.id)
                if e.event_id in applied:
                    s.forget.append(e.event_id)
                continue
            if e.aggregate in stalled or not errors[e.event_id]:
                s.released.append(e.id)  # not tried (or behind a failure): no attempt counted
            else:
                failures = e.attempts + 1
                s.failed.append((e.id, "; ".join(errors[e.event_id]),
                                 now + self.policy.retry_delay(failures),
                                 failures >= self.policy.max_attempts))
            stalled.add(e.aggregate)
            s.applied.extend((e.event_id, c)
                             for c in done[e.event_id] - applied.get(e.event_id, set()))
        return s

    # -- housekeeping -----------------------------------------------------------------------

    def _hold_lease(self, now: float) -> bool:
        if now < self._lease_until - self.policy.claim_s / 2:
            return True
        if now < self._standby_until:
            return False
        until = now + self.policy.claim_s
        if self.store.run(outbox_sql.take_lease, LEASE, self.owner, now, until, write=True):
            self._lease_until = until
            return True
        # Another relay holds it: look again in a while rather than write every poll.
        self._lease_until = 0.0
        self._standby_until = now + min(5.0, self.policy.claim_s / 3)
        return False

    def _observe_backlog(self, now: float) -> None:
        if now - self._backlog_at < BACKLOG_EVERY_S:
            return
        self._backlog_at = now
        pending, oldest = self.store.run(queries.outbox_backlog)
        self.metrics.backlog(pending, max(0.0, now - oldest) if oldest else 0.0)


def build(settings: Any, store: Any, *, feed_publish: Any = None,
          metrics: RelayMetrics | None = None) -> Relay:
    """A relay as Settings describe it: the event feed (when given how to publish to it),
    batch webhooks, then any consumers Settings.outbox_consumers names."""
    consumers: list[Consumer] = [FeedConsumer(feed_publish)] if feed_publish else []
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    consumers.append(WebhookConsumer(store, default_secret=secret,
                                     timeout_s=settings.webhook_timeout_seconds))
    consumers.extend(load_extra(settings.outbox_consumers, settings))
    return Relay(store, consumers, policy=RelayPolicy.from_settings(settings), metrics=metrics)
