"""EventFeedActor ("wtb-event-feed"): the events the outbox relay delivered, for event
streams to wait on instead of polling the outbox table (wtb_ray/outbox/feed.py).

An async actor: any number of ``wait`` calls block at once without holding a thread.
"""

from __future__ import annotations

from typing import Any

import ray

from wtb_ray.config import Settings
from wtb_ray.outbox.feed import EventFeed

NAMESPACE = "wtb"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class EventFeedActor:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.feed = EventFeed(Settings(**settings).event_feed_size)

    async def publish(self, events: list[dict[str, Any]]) -> int:
        """Take in delivered events; returns how many were new (idempotent by event id)."""
        return self.feed.publish(events)

    async def wait(self, after_id: int, batch_id: str | None = None,
                   execution_id: str | None = None, timeout: float = 20.0
                   ) -> list[dict[str, Any]]:
        """The events after outbox id ``after_id`` (optionally of one batch or execution),
        as soon as there are any, or [] after ``timeout`` seconds."""
        return await self.feed.wait(after_id, batch_id=batch_id, execution_id=execution_id,
                                    timeout=timeout)

    async def stats(self) -> dict[str, int]:
        return self.feed.stats()


def get_or_create(settings: Settings) -> Any:
    """The cluster's event feed (named, detached, in namespace "wtb")."""
    return EventFeedActor.options(name=settings.event_feed_name, namespace=NAMESPACE,
                                  lifetime="detached", get_if_exists=True
                                  ).remote(settings.for_actors())
