"""The integrity checker: run every check, repair what it finds if asked, store the report.

It reads in pages and writes in small transactions (see checks.py and repairs.py), so it can
run next to live work: on a schedule in the cluster (actors/integrity_cron.py) or once from
`wtb integrity check [--repair]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from wtb_ray.integrity import checks, repairs
from wtb_ray.integrity.checks import Context
from wtb_ray.integrity.findings import Finding, Report
from wtb_ray.storage import integrity_sql

log = logging.getLogger(__name__)

# In this order: recovering executions writes boundaries, audit entries and outbox rows and
# moves batch counts, which the later checks then see as they are.
PLAN: list[tuple[Callable[[Context], list[Finding]],
                 dict[str, Callable[[Context, list[Finding]], None]]]] = [
    (checks.expired_leases, {"expired_lease": repairs.expired_leases}),
    (checks.boundary_checkpoints, {"boundary_missing_checkpoint": repairs.boundary_checkpoints}),
    (checks.boundary_audits, {"boundary_missing_audit": repairs.boundary_audits}),
    (checks.blobs, {"unreachable_blob": repairs.unreachable_blobs,
                    "checkpoint_missing_blob": repairs.missing_blobs}),
    (checks.batch_counts, {"batch_count_mismatch": repairs.batch_counts}),
    (checks.stuck_outbox, {"stuck_outbox": repairs.stuck_outbox}),
]


class IntegrityChecker:
    def __init__(self, bench: Any, *, requeue: repairs.Requeue | None = None) -> None:
        self.bench = bench
        self.settings = bench.settings
        self.requeue = requeue or repairs.requeue_here(bench)

    def run(self, *, repair: bool = False, trigger: str = "cli") -> Report:
        report = Report(time.time(), trigger, repair)
        ctx = Context(self.bench, self.settings, report.started_at, self.requeue)
        for check, fixes in PLAN:
            findings = check(ctx)
            report.findings.extend(findings)
            if not repair:
                continue
            for kind, fix in fixes.items():
                mine = [f for f in findings if f.kind == kind]
                if not mine:
                    continue
                try:
                    fix(ctx, mine)
                except Exception as exc:  # one kind's repair failing leaves the rest to run
                    log.exception("integrity repair of %s failed", kind)
                    for f in mine:
                        if not f.repaired:
                            f.not_fixed(f"repair failed: {type(exc).__name__}: {exc}")
        report.finished_at = time.time()
        report.id = self.bench.store.run(integrity_sql.save_report, report.to_dict(),
                                         write=True)
        return report
