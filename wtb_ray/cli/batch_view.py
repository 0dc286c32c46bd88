"""How batches look in a terminal: live progress per combination, the leaderboard, CSV."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from rich.table import Table

from wtb_ray.render import status as status_style

COLUMNS = ("completed", "failed", "retrying", "running", "pending", "cancelled", "paused")


def combo_label(combo: str | dict[str, str]) -> str:
    choice = json.loads(combo) if isinstance(combo, str) else combo
    return ", ".join(f"{n}={v}" for n, v in sorted(choice.items())) or "all default"


def progress_table(progress: dict[str, Any]) -> Table:
    batch = progress["batch"]
    # Counted from the cells, as the rows below are (the batch's own counts are saved by
    # its driver every so often, and lag them while it runs).
    done = sum(counts.get(s, 0) for counts in progress["combinations"].values()
               for s in ("completed", "failed", "cancelled"))
    retry = progress.get("retry_in_s")  # its driver failed (the database away, say)
    waiting = f"  (driver failed; tried again in {retry:.0f} s)" if retry is not None else ""
    table = Table(title=f"batch {batch['id']} {batch['name']}: {status_style(batch['status'])}"
                        f"  {done}/{batch['total']} cells{waiting}", title_justify="left",
                  box=None, pad_edge=False)
    table.add_column("combination", overflow="fold")
    shown = [c for c in COLUMNS if any(c in counts for counts in
                                       progress["combinations"].values())] or ["pending"]
    for column in shown:
        table.add_column(column, justify="right")
    for combo, counts in sorted(progress["combinations"].items()):
        table.add_row(combo_label(combo), *(str(counts.get(c, 0)) for c in shown))
    return table


def outage_line(error: str, since: float) -> str:
    """Shown while the database does not answer: the batch goes on without us watching."""
    return (f"database unreachable since {time.strftime('%H:%M:%S', time.localtime(since))} "
            f"({error}); the batch goes on, and its progress shows again once the database "
            "answers")


def leaderboard_table(rows: list[dict[str, Any]]) -> Table:
    """One row per combination; ``*`` marks a difference from #1 whose 95% CI excludes 0."""
    table = Table(title="leaderboard  (vs #1: paired pass-rate difference, 95% bootstrap CI, "
                        "* = significant)", title_justify="left", box=None, pad_edge=False)
    metrics = sorted({m for r in rows for m in r["metrics"]} - {"latency_ms"})
    for column in ("#", "combination", "pass", "vs #1", "95% CI", "p50 ms", "p95 ms",
                   *metrics, "done"):
        # Fold rather than cut with "...": a narrow terminal still shows every value.
        table.add_column(column.split(":")[0], overflow="fold",
                         justify="left" if column == "combination" else "right",
                         min_width=16 if column == "combination" else None)
    for r in rows:
        if r["vs_best"] is None:
            delta, ci = "", ""
        else:
            delta = f"{r['vs_best']:+.2f}" + ("*" if r["significant"] else " ")
            ci = f"{r['ci_low']:+.2f}..{r['ci_high']:+.2f}"
        table.add_row(str(r["rank"]), combo_label(r["variants"]),
                      f"{r['pass_rate']:.0%}", delta, ci, _ms(r["p50_ms"]), _ms(r["p95_ms"]),
                      *(f"{r['metrics'][m]:.3g}" if m in r["metrics"] else "-" for m in metrics),
                      f"{r['completed']}/{r['cells']}")
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def results_csv(cells: list[dict[str, Any]]) -> str:
    metric_names = sorted({m for c in cells for m in c["metrics"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["execution_id", "combination", "case_id", "repeat", "status", "passed",
                     "latency_ms", "node_count", *metric_names, "error"])
    for c in cells:
        writer.writerow([c["execution_id"], combo_label(c["combo"]), c["case_id"], c["repeat"],
                         c["status"], c["passed"], c["latency_ms"], c["node_count"],
                         *(c["metrics"].get(m, "") for m in metric_names), c["error"] or ""])
    return out.getvalue()
