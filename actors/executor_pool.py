"""Executors shared by every batch the orchestrator drives, one set per runtime environment.

Starting an executor (a worker process, imports, a database connection) costs seconds, so
idle ones are kept warm for the next batch and killed after ``executor_idle_seconds``, or at
once when a different environment needs their CPUs.

Only started executors are handed out. An executor still waiting for a CPU would hold the
chunks given to it while executors another batch has just released sat idle on the CPUs it
waits for: batches submitted together would run one ``executor_idle_seconds`` apart. So the
pool starts executors only where the cluster has room (one at a time where it reports none:
an autoscaler adds nodes for it), hands each out once it is up, and wakes waiting batches
whenever one is released or started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray

from actors.executor import VariantExecutionActor

log = logging.getLogger(__name__)
NAMESPACE = "wtb"
FREE_CPU_TTL_S = 0.5  # how long the cluster's free CPU count is reused (a GCS round trip)


class ExecutorStartError(RuntimeError):
    """An executor for a runtime environment could not start (its env failed to build,
    say); the error says why."""


class ExecutorPool:
    def __init__(self, settings: dict[str, Any], prefix: str, idle_seconds: float) -> None:
        self.settings = settings
        self.prefix = prefix
        self.idle_seconds = idle_seconds
        self.warm: dict[str, list[tuple[Any, float]]] = {}  # env -> (actor, idle since)
        self.starting: dict[Any, str] = {}  # actor -> env, until it is up
        self.failed: dict[str, BaseException] = {}  # env -> why its last start failed
        self.names: dict[Any, str] = {}
        self.serial = 0  # names are never reused: a dead actor's name lingers a while
        self._free: tuple[float, float] = (0.0, float("-inf"))  # (CPUs, read at)
        self._changed: asyncio.Event | None = None

    def acquire(self, env: str, runtime_env: dict[str, Any], want: int = 1) -> Any | None:
        """A started executor for ``env``, or None after starting up to ``want`` of them
        where there is room: call again once ``changed`` returns."""
        if self.warm.get(env):
            actor, _ = self.warm[env].pop()
            return actor
        if env in self.failed:
            error = self.failed.pop(env)
            raise ExecutorStartError(f"an executor for runtime_env {runtime_env or {}} could "
                                     f"not start: {type(error).__name__}: {error}")
        room = self._room()
        if room < 1 and any(self.warm.values()):
            self._kill_warm(lambda e, since: e != env)  # their CPUs go to this environment
            room = 1
        for _ in range(min(want, room) - sum(e == env for e in self.starting.values())):
            self._start(env, runtime_env)
        return None

    async def changed(self, timeout: float) -> None:
        """Until an executor is released, started or lost, or ``timeout`` seconds pass."""
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
            await asyncio.wait_for(self._changed.wait(), timeout)

    def release(self, env: str, actor: Any) -> None:
        self.warm.setdefault(env, []).append((actor, time.monotonic()))
        self._notify()

    def discard(self, actor: Any) -> None:
        """An executor that died, or is not fit to be reused: forget it (and make sure it
        is gone)."""
        self.names.pop(actor, None)
        self.starting.pop(actor, None)
        ray.kill(actor)
        self._notify()

    def reap(self) -> None:
        deadline = time.monotonic() - self.idle_seconds
        self._kill_warm(lambda e, since: since < deadline)

    def name(self, actor: Any) -> str:
        return self.names.get(actor, "?")

    def _start(self, env: str, runtime_env: dict[str, Any]) -> None:
        self.serial += 1
        name = f"{self.prefix}-exec-{env or 'base'}-{self.serial}"
        options: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
        if runtime_env:
            options["runtime_env"] = runtime_env
        actor = VariantExecutionActor.options(**options).remote(self.settings)
        self.names[actor] = name
        self.starting[actor] = env
        ready = asyncio.wrap_future(actor.__ray_ready__.remote().future())
        ready.add_done_callback(lambda f: self._started(env, actor, f))

    def _started(self, env: str, actor: Any, ready: asyncio.Future) -> None:
        if self.starting.pop(actor, None) is None:
            return  # discarded while it started
        error = ready.exception()
        if error is None:
            self.warm.setdefault(env, []).append((actor, time.monotonic()))
        else:
            log.error("an executor for runtime environment %r could not start: %s",
                      env or "base", error)
            self.failed[env] = error
            self.names.pop(actor, None)
        self._notify()

    def _room(self) -> int:
        """Executors that may start now: the cluster's free CPUs less those starting (some
        already counted by Ray: erring low only delays a start until they are up), or one if
        none is starting (it waits for a CPU, which an autoscaler may add)."""
        now = time.monotonic()
        if now - self._free[1] > FREE_CPU_TTL_S:
            self._free = (ray.available_resources().get("CPU", 0.0), now)
        room = int(self._free[0]) - len(self.starting)
        return max(room, 0 if self.starting else 1)

    def _kill_warm(self, doomed) -> None:
        for env, entries in self.warm.items():
            keep = []
            for actor, since in entries:
                if doomed(env, since):
                    self.discard(actor)
                else:
                    keep.append((actor, since))
            entries[:] = keep

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
