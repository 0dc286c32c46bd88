"""Domain events and the in-process event bus.

Every event is also stored twice in the transaction that causes it: as an audit entry (kept,
queryable per execution) and as an outbox row (relayed to consumers at least once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from wtb_ray.domain.ids import ordered_hex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    kind: str  # e.g. "execution.started", "node.completed"
    execution_id: str
    node: str | None = None
    checkpoint_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: ordered_hex(32))  # 84 random bits
    batch_id: str | None = None

    def with_checkpoint(self, checkpoint_id: int) -> Event:
        return Event(self.kind, self.execution_id, self.node, checkpoint_id, self.data, self.at,
                     self.id, self.batch_id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "execution_id": self.execution_id,
                "batch_id": self.batch_id, "node": self.node, "checkpoint_id": self.checkpoint_id,
                "data": self.data, "at": self.at}


Handler = Callable[[Event], None]


class EventBus:
    """Thread-safe publish/subscribe within one process.

    Handlers run in the publishing thread after the change is committed; a handler that
    raises is logged and does not stop the others or the execution.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[tuple[Handler, frozenset[str] | None], ...] = ()

    def subscribe(self, handler: Handler, kinds: Iterable[str] | None = None) -> Callable[[], None]:
        """Call ``handler`` for events of ``kinds`` (all if None); returns an unsubscribe."""
        entry = (handler, frozenset(kinds) if kinds is not None else None)
        with self._lock:
            self._subscribers = (*self._subscribers, entry)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not entry)

        return unsubscribe

    def publish(self, events: Iterable[Event]) -> None:
        subscribers = self._subscribers  # copy-on-write: no lock on the hot path
        if not subscribers:
            return
        for event in events:
            for handler, kinds in subscribers:
                if kinds is None or event.kind in kinds:
                    try:
                        handler(event)
                    except Exception:
                        log.exception("event handler %r failed on %s", handler, event.kind)
