"""What every route needs, built once per replica: settings, the store, the registry."""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated, Any

import ray
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter

from serve.auth import resolve_token
from wtb_ray.batch.service import BatchService
from wtb_ray.config import Settings
from wtb_ray.domain.graph import Workflow
from wtb_ray.engine.bench import Bench
from wtb_ray.engine.loader import load_workflow

log = logging.getLogger(__name__)
SCHEDULE_COALESCE_S = 0.02
WARM_TIMEOUT_S = 60.0


class BadField(Exception):
    """A request field the server refuses (422), named."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field, self.message = field, message


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.token = resolve_token(settings)
        self.bench = Bench.open(settings)
        self.batches = BatchService(self.bench)
        self.metrics = CollectorRegistry()
        self.requests = Counter("wtb_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.metrics)
        self._workflows: dict[str, Workflow] = {}
        self._orchestrator: Any = None
        self._lock = threading.Lock()
        self._to_schedule: list[str] = []
        self._wake = threading.Event()
        self._scheduler: threading.Thread | None = None

    def ref(self, name: str) -> str:
        try:
            return self.settings.workflows[name]
        except KeyError:
            raise BadField("workflow", f"workflow {name!r} is not registered (registered: "
                                       f"{', '.join(sorted(self.settings.workflows))})") from None

    def workflow(self, name: str) -> Workflow:
        ref = self.ref(name)
        with self._lock:
            if name not in self._workflows:
                self._workflows[name] = load_workflow(ref)
            return self._workflows[name]

    def orchestrator(self) -> Any:
        """The batch orchestrator (created if the cluster has none yet)."""
        with self._lock:
            if self._orchestrator is None:
                from actors.orchestrator import get_or_create

                self._orchestrator = get_or_create(self.settings)
            return self._orchestrator

    def warm(self, timeout: float = WARM_TIMEOUT_S) -> None:
        """Create and boot the orchestrator before the replica takes requests, so that the
        application being ready means /healthz answers ok: starting the actor takes seconds
        on a busy machine, more than a health check waits. A failure here is logged, not
        raised: /healthz then says what is wrong, and the next request tries again."""
        try:
            ray.get(self.orchestrator().boot.remote(), timeout=timeout)
        except Exception:
            log.exception("the orchestrator did not boot within %s s", timeout)

    def schedule(self, batch_id: str) -> None:
        """Hand a persisted batch to the orchestrator, without waiting. Batches submitted
        close together go in one actor call: a call costs the replica about as much CPU as
        persisting the batch. (Were this replica to die in those 20 ms, or the call to fail,
        the orchestrator's housekeeping picks the pending batch up within seconds.)"""
        with self._lock:
            self._to_schedule.append(batch_id)
            if self._scheduler is None:
                self._scheduler = threading.Thread(target=self._send_schedules, daemon=True,
                                                   name="wtb-schedule")
                self._scheduler.start()
        self._wake.set()

    def _send_schedules(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(SCHEDULE_COALESCE_S)
            with self._lock:
                self._wake.clear()
                ids, self._to_schedule = self._to_schedule, []
            if ids:
                try:
                    self.orchestrator().schedule.remote(*ids)
                except Exception:  # the cluster is going away; nothing here can help
                    log.exception("could not hand batches %s to the orchestrator", ids)


_replica: Api | None = None  # one per process: each Serve replica is a process of its own


def install(state: Api) -> None:
    global _replica
    _replica = state


def current() -> Api:
    if _replica is None:
        raise RuntimeError("the API is not set up in this process")
    return _replica


def api(request: Request) -> Api:
    return current()


Ctx = Annotated[Api, Depends(api)]
