"""IntegrityCron: runs the integrity checker every Settings.integrity_interval_seconds on the
cluster, repairing (Settings.integrity_repair), and exports the findings as Ray metrics.

Executions whose runner died are recovered on the cluster, through the paths that already
recover them: a batch cell by its batch's orchestrator (which takes over running cells whose
lease is dead), any other execution by the Ray task that resumes executions started over HTTP.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray
from ray.util.metrics import Counter, Gauge

from actors import orchestrator, runs
from actors.restart import open_bench
from wtb_ray.config import Settings
from wtb_ray.domain.batch import FINISHED
from wtb_ray.domain.errors import NotFound
from wtb_ray.domain.execution import Execution
from wtb_ray.integrity.checker import IntegrityChecker
from wtb_ray.storage.batches import Batches

log = logging.getLogger(__name__)
NAMESPACE = "wtb"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class IntegrityCron:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.values = settings
        self.settings = Settings(**settings)
        self.bench = open_bench(self.settings)
        self.checker = IntegrityChecker(self.bench, requeue=self._requeue_on_ray)
        self.findings = Gauge("wtb_integrity_findings",
                              description="Findings of the last integrity check, by kind",
                              tag_keys=("kind",))
        self.repairs = Counter("wtb_integrity_repairs_total",
                               description="Integrity findings repaired, by kind",
                               tag_keys=("kind",))
        self.last_run = Gauge("wtb_integrity_last_run_timestamp_seconds",
                              description="When the integrity checker last finished")
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="wtb-integrity-cron", daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.integrity_interval_seconds):
            try:
                self.run_now()
            except Exception:  # the database is away, say: try again at the next interval
                log.exception("scheduled integrity check failed")

    def run_now(self, repair: bool | None = None) -> dict[str, Any]:
        """Run the checks now (repairing as configured, unless told); returns the report."""
        with self._lock:
            report = self.checker.run(
                repair=self.settings.integrity_repair if repair is None else repair,
                trigger="cron")
            self._last = report.to_dict()
        for kind, counts in self._last["counts"].items():
            self.findings.set(counts["found"], tags={"kind": kind})
            if counts["repaired"]:
                self.repairs.inc(counts["repaired"], tags={"kind": kind})
        self.last_run.set(report.finished_at)
        if self._last["counts"]["stuck_outbox"]["repaired"]:
            self._wake_relay()
        return self._last

    def last(self) -> dict[str, Any] | None:
        return self._last

    def _wake_relay(self) -> None:
        try:
            ray.get_actor(self.settings.outbox_relay_name, namespace=NAMESPACE).wake.remote()
        except ValueError:  # no relay on this cluster: the events wait for one
            log.warning("stuck outbox events released, but no relay %r is running",
                        self.settings.outbox_relay_name)

    def _requeue_on_ray(self, executions: list[Execution]) -> dict[str, str]:
        batches = Batches(self.bench.store)
        scheduled: set[str] = set()
        outcomes = {}
        for ex in executions:
            if ex.batch_id and _unfinished(batches, ex.batch_id):
                if ex.batch_id not in scheduled:
                    orchestrator.get_or_create(self.settings).schedule.remote(ex.batch_id)
                    scheduled.add(ex.batch_id)
                outcomes[ex.id] = (f"handed to the batch orchestrator, which recovers it from "
                                   f"checkpoint {ex.head_checkpoint_id}")
            else:
                runs.drive.remote(self.values, "resume", ex.id, {})
                outcomes[ex.id] = (f"requeued as a Ray task that recovers it from checkpoint "
                                   f"{ex.head_checkpoint_id}")
        return outcomes


def _unfinished(batches: Batches, batch_id: str) -> bool:
    try:
        return batches.get(batch_id).status not in FINISHED
    except NotFound:
        return False


def get_or_create(settings: Settings) -> Any:
    """The cluster's integrity checker (named, detached, in namespace "wtb")."""
    return IntegrityCron.options(name=settings.integrity_cron_name, namespace=NAMESPACE,
                                 lifetime="detached", get_if_exists=True
                                 ).remote(settings.for_actors())

