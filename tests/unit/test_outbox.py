"""Outbox pieces with no database: the event feed, webhook signatures, in-order delivery, the
webhook field of a batch spec."""

import asyncio
import hashlib
import hmac
import time

import pytest

from wtb_ray.batch.spec import parse_spec
from wtb_ray.domain.errors import InvalidInput
from wtb_ray.outbox import signing
from wtb_ray.outbox.consumers import DeliveryFailed, Envelope, deliver_each
from wtb_ray.outbox.feed import EventFeed


def event(outbox_id, execution="e1", kind="node.completed", batch=None):
    return {"id": outbox_id, "event_id": f"ev{outbox_id}", "kind": kind,
            "execution_id": execution, "batch_id": batch}


def test_the_feed_applies_each_event_once_and_serves_them_in_id_order():
    feed = EventFeed(size=100)
    assert feed.publish([event(3), event(1)]) == 2
    assert feed.publish([event(1), event(2)]) == 1  # ev1 again: a redelivery
    assert [e["id"] for e in feed.after(0)] == [1, 2, 3]
    assert [e["id"] for e in feed.after(1)] == [2, 3]
    assert feed.stats() == {"received": 4, "applied": 3, "held": 3, "oldest_id": 1}


def test_the_feed_filters_like_the_outbox_query():
    feed = EventFeed()
    feed.publish([event(1, "e1", batch="b1"), event(2, "e2", batch="b1"),
                  event(3, "e1", kind="batch.started", batch="b1"), event(4, "e3")])
    assert [e["id"] for e in feed.after(0, batch_id="b1")] == [1, 2, 3]
    # a batch event that names an execution belongs to the batch, not to the execution
    assert [e["id"] for e in feed.after(0, execution_id="e1")] == [1]
    assert [e["id"] for e in feed.after(0, limit=2)] == [1, 2]


def test_the_feed_holds_the_newest_events_only():
    feed = EventFeed(size=100)
    feed.publish([event(i) for i in range(1, 151)])
    assert feed.stats()["held"] == 100 and feed.after(0)[0]["id"] == 51


def test_waiting_on_the_feed_returns_as_soon_as_an_event_arrives_or_empty_after_timeout():
    async def scenario():
        feed = EventFeed()
        waiter = asyncio.create_task(feed.wait(0, execution_id="e2", timeout=30))
        await asyncio.sleep(0.01)
        feed.publish([event(1, "e1")])  # not for this waiter: it keeps waiting
        await asyncio.sleep(0.01)
        assert not waiter.done()
        feed.publish([event(2, "e2")])
        got = await asyncio.wait_for(waiter, 5)
        empty = await feed.wait(2, timeout=0.05)
        return got, empty

    got, empty = asyncio.run(scenario())
    assert [e["id"] for e in got] == [2] and empty == []


def test_signatures_are_hmac_sha256_over_timestamp_and_body():
    body, secret, ts = b'{"kind":"batch.created"}', "s3cret-s3cret-s3cret", str(int(time.time()))
    expected = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert signing.sign(secret, ts, body) == f"sha256={expected}"
    assert signing.verify(secret, body, ts, f"sha256={expected}")
    assert not signing.verify(secret, body + b" ", ts, f"sha256={expected}")
    assert not signing.verify("another-secret-value", body, ts, f"sha256={expected}")
    old = str(int(time.time()) - 3600)
    assert not signing.verify(secret, body, old, signing.sign(secret, old, body))
    assert not signing.verify(secret, body, None, None)


def envelope(outbox_id, aggregate="e1", url="u1"):
    return Envelope(outbox_id, f"ev{outbox_id}", ("execution", aggregate), "node.completed",
                    None, 0, 0.0, {"url": url})


def test_delivering_one_at_a_time_never_lets_an_event_overtake_a_failed_one():
    sent = []

    def send(e):
        if e.id == 2:
            raise DeliveryFailed("HTTP 500")
        sent.append(e.id)

    events = [envelope(1), envelope(2), envelope(3), envelope(4, "e2"), envelope(5, "e3", "u2")]
    outcome = deliver_each(events, send, time.time() + 60, key=lambda e: e.body["url"])
    assert outcome == {"ev1": None, "ev2": "HTTP 500", "ev5": None}
    assert sent == [1, 5]  # 3 waits for 2; 4 shares the failing URL: not tried this round
    assert deliver_each(events, send, time.time() - 1) == {}  # past the deadline: nothing


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/hook", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("https://user:pw@example.com/hook", "credentials"),
    ("https:///hook", "host"),
])
def test_a_webhook_must_be_a_plain_http_or_https_url(url, message):
    with pytest.raises(InvalidInput, match=rf"webhook\.url: .*{message}"):
        parse_spec({"workflow": "tests.workflows:chain", "cases": [{"id": "c"}],
                    "webhook": {"url": url}})


def test_a_webhook_secret_is_long_enough_and_never_shown():
    with pytest.raises(InvalidInput, match=r"webhook\.secret"):
        parse_spec({"workflow": "tests.workflows:chain", "cases": [{"id": "c"}],
                    "webhook": {"url": "https://example.com/h", "secret": "short"}})
    spec = parse_spec({"workflow": "tests.workflows:chain", "cases": [{"id": "c"}],
                       "webhook": {"url": "https://example.com/h",
                                   "secret": "a-long-enough-secret", "events": ["batch.*"]}})
    assert "a-long-enough-secret" not in repr(spec)
    assert spec.webhook.events == ["batch.*"]
