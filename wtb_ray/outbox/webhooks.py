"""The webhook consumer: a batch spec's ``webhook`` receives its batch's and executions' events.

Each event is one POST of its JSON (the same object the HTTP event stream sends), signed
(see signing.py) with the batch's secret or the relay's WTB_WEBHOOK_SECRET, and carrying the
event id as ``Idempotency-Key``: a redelivery after a relay crash repeats it, and the receiver
applies the event once. Any 2xx is success; anything else (redirects included) is a failure
the relay retries with backoff.
"""

from __future__ import annotations

import fnmatch
import json
import time
from typing import Any

import httpx

from wtb_ray.outbox import signing
from wtb_ray.outbox.consumers import DeliveryFailed, Envelope, Outcome, deliver_each
from wtb_ray.storage import outbox_sql

USER_AGENT = "wtb-outbox-relay"
_CACHE_MAX = 10_000


class WebhookConsumer:
    name = "webhook"

    def __init__(self, store: Any, *, default_secret: str | None = None,
                 timeout_s: float = 10.0, client: httpx.Client | None = None) -> None:
        self.store = store
        self.default_secret = default_secret
        self.timeout_s = timeout_s
        self.client = client or httpx.Client(follow_redirects=False,
                                             headers={"User-Agent": USER_AGENT})
        # batch id -> its webhook or None. A batch's webhook row is written with the batch
        # itself, before any of its events exists, so what is read here never goes stale.
        self._hooks: dict[str, dict[str, Any] | None] = {}

    def close(self) -> None:
        self.client.close()

    def _hook(self, batch_id: str | None) -> dict[str, Any] | None:
        return self._hooks.get(batch_id) if batch_id else None

    def select(self, events: list[Envelope]) -> list[Envelope]:
        unknown = sorted({e.batch_id for e in events if e.batch_id} - self._hooks.keys())
        if unknown:
            if len(self._hooks) > _CACHE_MAX:
                self._hooks.clear()
            found = self.store.run(outbox_sql.webhooks, unknown)
            self._hooks.update({b: found.get(b) for b in unknown})
        return [e for e in events if (hook := self._hook(e.batch_id)) is not None
                and any(fnmatch.fnmatchcase(e.kind, p) for p in hook["events"])]

    def deliver(self, events: list[Envelope], deadline: float) -> Outcome:
        # A URL that fails is not tried again in this round: a dead endpoint costs one
        # timeout per round, not one per event.
        return deliver_each(events, lambda e: self._send(e, deadline), deadline,
                            key=lambda e: self._hook(e.batch_id)["url"])

    def _send(self, event: Envelope, deadline: float) -> None:
        hook = self._hook(event.batch_id)
        secret = hook["secret"] or self.default_secret
        if not secret:
            raise DeliveryFailed("no webhook secret: give the batch spec's webhook.secret or "
                                 "set WTB_WEBHOOK_SECRET where the relay runs")
        body = json.dumps(event.body, separators=(",", ":"), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "Idempotency-Key": event.event_id,
                   "X-WTB-Event": event.kind, "X-WTB-Timestamp": timestamp,
                   "X-WTB-Signature": signing.sign(secret, timestamp, body)}
        timeout = max(0.1, min(self.timeout_s, deadline - time.time()))
        try:
            response = self.client.post(hook["url"], content=body, headers=headers,
                                        timeout=timeout)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{hook['url']}: {type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"{hook['url']}: HTTP {response.status_code}: "
                                 f"{response.text[:200]}")
