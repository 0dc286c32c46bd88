"""What the integrity checker reports: findings (a kind, the ids involved, the repair taken)
and the report of one run."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# kind -> what it means, and what --repair does about it
KINDS: dict[str, tuple[str, str]] = {
    "expired_lease": (
        "an execution is running but its runner is gone (lease expired or process dead)",
        "requeue it from its last checkpoint, or fail it after its max attempts"),
    "boundary_missing_checkpoint": (
        "a node boundary names an entry or exit checkpoint that does not exist",
        "clear the dangling reference (noted in the boundary's error)"),
    "boundary_missing_audit": (
        "a node boundary has no node.completed / node.failed audit entry",
        "write the audit entry again from the boundary"),
    "checkpoint_missing_blob": (
        "checkpoints name a state value or workspace blob that is not stored",
        "record the checkpoints as damaged (their state cannot be loaded)"),
    "unreachable_blob": (
        "a stored blob no checkpoint reaches, older than the gc grace period",
        "collect it (as `wtb gc` does)"),
    "batch_count_mismatch": (
        "a finished batch's counts disagree with its executions",
        "recount from the executions"),
    "stuck_outbox": (
        "an event is still undelivered past WTB_OUTBOX_STUCK_SECONDS",
        "release a claim no live relay holds, or a retry's backoff (a live claim, and an "
        "event nothing holds back because no relay runs, are left as they are)"),
}
LISTED_PER_KIND = 1000  # a report lists this many findings of each kind (and counts all)


@dataclass
class Finding:
    kind: str
    ids: dict[str, Any]
    detail: str
    repair: str | None = None  # what was done about it; None when not repaired
    repaired: bool = False

    def fixed(self, repair: str) -> None:
        self.repair, self.repaired = repair, True

    def not_fixed(self, why: str) -> None:
        self.repair, self.repaired = why, False


@dataclass
class Report:
    started_at: float
    trigger: str  # "cli" or "cron"
    repair: bool
    findings: list[Finding] = field(default_factory=list)
    finished_at: float = 0.0
    id: int | None = None

    @property
    def found(self) -> int:
        return len(self.findings)

    @property
    def repaired(self) -> int:
        return sum(f.repaired for f in self.findings)

    def counts(self) -> dict[str, dict[str, int]]:
        found = Counter(f.kind for f in self.findings)
        repaired = Counter(f.kind for f in self.findings if f.repaired)
        return {kind: {"found": found[kind], "repaired": repaired[kind]} for kind in KINDS}

    def to_dict(self) -> dict[str, Any]:
        listed: Counter[str] = Counter()
        shown = []
        for f in self.findings:
            listed[f.kind] += 1
            if listed[f.kind] <= LISTED_PER_KIND:
                shown.append(asdict(f))
        return {"id": self.id, "started_at": self.started_at, "finished_at": self.finished_at,
                "trigger": self.trigger, "repair": self.repair, "found": self.found,
                "repaired": self.repaired, "counts": self.counts(), "findings": shown,
                "truncated": len(shown) < len(self.findings)}
