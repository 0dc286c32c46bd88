"""The event feed: recently delivered events, for event streams to wait on instead of polling.

The relay publishes every event it delivers; a stream asks for the events after its cursor
(the outbox id, which is what Last-Event-ID carries) and, if there are none yet, waits until
one arrives or its timeout passes. Publishing is idempotent by event id: an event the relay
delivers again after a crash is applied once.

The feed holds the newest ``size`` events. Two things it cannot tell a stream, which is why
the outbox table stays the durable log: events older than what it holds, and an event whose
outbox id is below a cursor already handed out (ids are taken when a transaction writes the
row, and transactions commit in any order, so ids arrive out of order across aggregates;
within one execution or batch they arrive in order).
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any


class EventFeed:
    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: list[int] = []  # outbox ids, ascending
        self._events: dict[int, dict[str, Any]] = {}
        self._event_ids: set[str] = set()
        self._arrived: asyncio.Event | None = None
        self.received = 0  # events published, duplicates included
        self.applied = 0  # events taken in (each event id once)

    def publish(self, events: list[dict[str, Any]]) -> int:
        """Take in delivered events (dicts with ``id`` and ``event_id``); returns how many were
        new. Wakes every waiting stream."""
        new = 0
        for event in events:
            self.received += 1
            if event["event_id"] in self._event_ids:
                continue
            self._event_ids.add(event["event_id"])
            bisect.insort(self._ids, event["id"])
            self._events[event["id"]] = event
            new += 1
        self.applied += new
        while len(self._ids) > self.size:
            evicted = self._events.pop(self._ids.pop(0))
            self._event_ids.discard(evicted["event_id"])
        if new and self._arrived is not None:
            self._arrived.set()
            self._arrived = None
        return new

    def after(self, after_id: int, *, batch_id: str | None = None,
              execution_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Held events with outbox id > ``after_id``, in id order, optionally of one batch or
        one execution (the same filters as the outbox query the stream uses)."""
        found = []
        for outbox_id in self._ids[bisect.bisect_right(self._ids, after_id):]:
            event = self._events[outbox_id]
            if batch_id and event.get("batch_id") != batch_id:
                continue
            if execution_id and (event["kind"].startswith("batch.")
                                 or event.get("execution_id") != execution_id):
                continue
            found.append(event)
            if len(found) >= limit:
                break
        return found

    async def wait(self, after_id: int, *, batch_id: str | None = None,
                   execution_id: str | None = None, timeout: float = 20.0,
                   limit: int = 500) -> list[dict[str, Any]]:
        """The events after ``after_id`` as soon as there are any; [] after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.after(after_id, batch_id=batch_id, execution_id=execution_id,
                               limit=limit)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            if self._arrived is None:
                self._arrived = asyncio.Event()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return []

    def stats(self) -> dict[str, int]:
        return {"received": self.received, "applied": self.applied, "held": len(self._ids),
                "oldest_id": self._ids[0] if self._ids else 0}
