"""Webhook signatures: HMAC-SHA256 over the timestamp and the exact body bytes.

    X-WTB-Timestamp: 1767225600
    X-WTB-Signature: sha256=<hex of HMAC-SHA256(secret, b"1767225600." + body)>

Signing the timestamp with the body lets a receiver refuse old requests replayed by someone
who captured one (``verify`` allows five minutes of clock difference by default).
"""

from __future__ import annotations

import hashlib
import hmac
import time

PREFIX = "sha256="


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return PREFIX + digest.hexdigest()


def verify(secret: str, body: bytes, timestamp: str | None, signature: str | None, *,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """True if ``signature`` is ours for this body and timestamp, and the timestamp is recent."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((now or time.time()) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
