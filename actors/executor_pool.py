"""Executors kept warm between batches, one set per runtime environment.

Starting an executor (a worker process, imports, a database connection) costs seconds; a
batch that follows another reuses the idle ones. Idle executors are killed after
``executor_idle_seconds``, and at once when a different environment needs the CPUs they hold.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from actors.executor import VariantExecutionActor

NAMESPACE = "wtb"


class ExecutorPool:
    def __init__(self, settings: dict[str, Any], prefix: str, idle_seconds: float) -> None:
        self.settings = settings
        self.prefix = prefix
        self.idle_seconds = idle_seconds
        self.warm: dict[str, list[tuple[Any, float]]] = {}  # env -> (actor, idle since)
        self.names: dict[Any, str] = {}
        self.serial = 0  # names are never reused: a dead actor's name lingers a while

    def acquire(self, env: str, runtime_env: dict[str, Any]) -> Any:
        """A warm executor for ``env``, or a new one (after freeing other envs' CPUs)."""
        if self.warm.get(env):
            actor, _ = self.warm[env].pop()
            return actor
        self._kill_warm(lambda e, since: e != env)
        self.serial += 1
        name = f"{self.prefix}-exec-{env or 'base'}-{self.serial}"
        options: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
        if runtime_env:
            options["runtime_env"] = runtime_env
        actor = VariantExecutionActor.options(**options).remote(self.settings)
        self.names[actor] = name
        return actor

    def release(self, env: str, actor: Any) -> None:
        self.warm.setdefault(env, []).append((actor, time.monotonic()))

    def discard(self, actor: Any) -> None:
        """An executor that died: forget it (and make sure it is gone)."""
        self.names.pop(actor, None)
        ray.kill(actor)

    def reap(self) -> None:
        deadline = time.monotonic() - self.idle_seconds
        self._kill_warm(lambda e, since: since < deadline)

    def _kill_warm(self, doomed) -> None:
        for env, entries in self.warm.items():
            keep = []
            for actor, since in entries:
                if doomed(env, since):
                    self.discard(actor)
                else:
                    keep.append((actor, since))
            entries[:] = keep

    def name(self, actor: Any) -> str:
        return self.names.get(actor, "?")
