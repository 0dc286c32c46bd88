"""Calling one node: sync or async, with its timeout and retry policy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from wtb_ray.domain.errors import NodeFailed, NodeTimeout
from wtb_ray.domain.nodes import ResolvedNode
from wtb_ray.engine.context import NodeContext


class NodeCaller:
    """Runs node callables. Threads and an event loop are created only when first needed.

    A sync node with a timeout runs in a worker thread; when it times out the run moves on,
    but Python cannot kill the thread, so the callable should be safe to abandon.
    Async nodes run on one background event loop, where a timeout cancels them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def call(self, node: ResolvedNode, state: Mapping[str, Any],
             make_ctx: Callable[[int], NodeContext],
             on_retry: Callable[[int, BaseException, float], None]) -> tuple[Any, NodeContext]:
        """Return (result, ctx of the successful attempt) or raise NodeFailed."""
        attempt = 1
        while True:
            ctx = make_ctx(attempt)
            try:
                return self._once(node, state, ctx), ctx
            except Exception as exc:
                if attempt >= node.retry.attempts or not node.retry.retries(exc):
                    raise NodeFailed(node.name, type(exc).__name__, str(exc), attempt) from exc
                delay = node.retry.delay(attempt)
                on_retry(attempt, exc, delay)
                if delay:
                    time.sleep(delay)
                attempt += 1

    def _once(self, node: ResolvedNode, state: Mapping[str, Any], ctx: NodeContext) -> Any:
        args = (state, ctx) if node.takes_ctx else (state,)
        if node.is_async:
            future = asyncio.run_coroutine_threadsafe(node.fn(*args), self._event_loop())
            return self._wait(future, node)
        if node.timeout is None:
            return node.fn(*args)
        return self._wait(self._thread_pool().submit(node.fn, *args), node)

    @staticmethod
    def _wait(future: concurrent.futures.Future, node: ResolvedNode) -> Any:
        try:
            return future.result(timeout=node.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NodeTimeout(f"node {node.name!r} timed out after {node.timeout} s") from None

    def _thread_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="wtb-node")
            return self._pool

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="wtb-async-nodes",
                                 daemon=True).start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None
