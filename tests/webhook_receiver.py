"""A real webhook receiver for tests: an HTTP server on a thread of the test process.

It checks every request's signature with the standard library (independently of WTB's own
signing code), applies each event once by its Idempotency-Key, and records every request with
when it started and ended, so a test can see duplicates, order and overlap.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    key: str
    kind: str
    body: dict[str, Any]
    signed_ok: bool
    status: int
    client: tuple[str, int]
    started: float
    ended: float = 0.0


@dataclass
class Receiver:
    secret: str
    fail_first: int = 0  # answer 500 to this many requests first
    delay_s: float = 0.0  # time spent "applying" each request
    requests: list[Request] = field(default_factory=list)
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> event
    order: list[str] = field(default_factory=list)  # keys, in the order applied

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def valid(self, body: bytes, timestamp: str, signature: str) -> bool:
        expected = hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body,
                            hashlib.sha256).hexdigest()
        return hmac.compare_digest(f"sha256={expected}", signature)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        body = h.rfile.read(int(h.headers["Content-Length"]))
        event = json.loads(body)
        key = h.headers["Idempotency-Key"]
        signed_ok = self.valid(body, h.headers["X-WTB-Timestamp"], h.headers["X-WTB-Signature"])
        with self._lock:
            failing = len(self.requests) < self.fail_first
            request = Request(key, event["kind"], event, signed_ok,
                              500 if failing or not signed_ok else 200, h.client_address,
                              started)
            self.requests.append(request)
        if self.delay_s:
            time.sleep(self.delay_s)
        if request.status == 200:
            with self._lock:
                if key not in self.applied:  # idempotent by key: a repeat changes nothing
                    self.applied[key] = event
                    self.order.append(key)
        request.ended = time.monotonic()
        h.send_response(request.status)
        h.send_header("Content-Length", "0")
        h.end_headers()
