"""What the relay delivers to, and the contract consumers keep.

A consumer gets events at least once: the relay may die after delivering and before marking
the rows delivered, and then delivers them again. So every consumer is idempotent by event id
(``Envelope.event_id``): a webhook receiver by the Idempotency-Key header, the event feed by
the ids it holds. Within one aggregate (an execution, a batch) events arrive in order, and a
consumer that fails one event must not apply the aggregate's later events in the same call
(``deliver_each`` does this for consumers that send events one at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from wtb_ray.engine.loader import load_object
from wtb_ray.storage import rows

# event_id -> None (applied) or the error; events left out were not tried (deferred)
Outcome = dict[str, str | None]


@dataclass(frozen=True)
class Envelope:
    """One outbox row as consumers see it."""

    id: int  # the outbox id: a stream's cursor
    event_id: str  # the idempotency key
    aggregate: tuple[str, str]  # ("execution", id) or ("batch", id): the unit of ordering
    kind: str
    batch_id: str | None
    attempts: int  # failed deliveries so far
    created_at: float
    body: dict[str, Any]  # the event as the HTTP event stream shows it

    @classmethod
    def from_row(cls, row: Any) -> Envelope:
        body = {**rows.event_from_outbox(row).to_dict(), "id": row.id, "event_id": row.event_id}
        return cls(row.id, row.event_id, (row.aggregate_type, row.aggregate_id), row.kind,
                   row.batch_id, row.attempts, row.created_at, body)


class Consumer(Protocol):
    name: str  # stable: progress is recorded under it (outbox_applied.consumer)

    def select(self, events: list[Envelope]) -> list[Envelope]:
        """The events this consumer wants, in the order given."""

    def deliver(self, events: list[Envelope], deadline: float) -> Outcome:
        """Apply the events; stop trying new ones after ``deadline`` (time.time())."""


class DeliveryFailed(Exception):
    """A consumer could not apply an event (the message is recorded as the row's last error)."""


def deliver_each(events: list[Envelope], send: Callable[[Envelope], None], deadline: float,
                 *, key: Callable[[Envelope], Any] | None = None) -> Outcome:
    """Send events one at a time, in order. After a failure the rest of that aggregate is
    not tried (it would overtake the failed event), nor, if ``key`` is given, the rest of
    the events with the same key (the same webhook URL, say: it is likely down)."""
    outcome: Outcome = {}
    stalled: set[Any] = set()
    for event in events:
        if time.time() >= deadline:
            break
        if event.aggregate in stalled or (key is not None and key(event) in stalled):
            continue
        try:
            send(event)
        except Exception as exc:
            outcome[event.event_id] = f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, DeliveryFailed) else str(exc)
            stalled.add(event.aggregate)
            if key is not None:
                stalled.add(key(event))
        else:
            outcome[event.event_id] = None
    return outcome


class FeedConsumer:
    """Hands events to the event feed (``publish(list of event dicts)``), all or nothing."""

    name = "feed"

    def __init__(self, publish: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.publish = publish

    def select(self, events: list[Envelope]) -> list[Envelope]:
        return events

    def deliver(self, events: list[Envelope], deadline: float) -> Outcome:
        self.publish([e.body for e in events])
        return {e.event_id: None for e in events}


def load_extra(refs: list[str], settings: Any) -> list[Consumer]:
    """Consumers named in Settings.outbox_consumers: ``package.module:factory``, each called
    with the settings and returning a consumer."""
    return [load_object(ref, "outbox consumer")(settings) for ref in refs]
