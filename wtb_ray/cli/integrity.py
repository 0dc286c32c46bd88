"""`wtb integrity check|report`: find (and repair) inconsistencies between the tables.

`check` exits 0 when it found nothing or repaired everything it found, 1 when findings are
left (so a cron job or CI can alert on it), 2 on bad input.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from wtb_ray.cli.common import DbOpt, JsonOpt, app, err, guarded, open_bench, out
from wtb_ray.domain.errors import InvalidInput
from wtb_ray.render import when

SHOWN = 50
integrity_app = typer.Typer(no_args_is_help=True,
                            help="Integrity checks of the database, and their reports.")
app.add_typer(integrity_app, name="integrity")


@integrity_app.command("check")
@guarded
def check(repair: Annotated[bool, typer.Option(
              "--repair", help="Repair what is found (executions whose runner died are "
                               "recovered here, from their last checkpoint).")] = False,
          json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Run every check once and store the report."""
    from wtb_ray.integrity.checker import IntegrityChecker

    with open_bench(db) as bench:
        report = IntegrityChecker(bench).run(repair=repair, trigger="cli").to_dict()
    if json_out:
        print(json.dumps(report))
    else:
        _show(report)
    if report["found"] > report["repaired"]:
        raise typer.Exit(1)


@integrity_app.command("report")
@guarded
def report(last: Annotated[bool, typer.Option(
               "--last", help="The newest report in full, findings included.")] = False,
           limit: Annotated[int, typer.Option(help="Reports listed (1-1000).")] = 20,
           json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Stored reports, newest first (or the newest one in full)."""
    from wtb_ray.storage import integrity_sql

    if not 1 <= limit <= 1000:
        raise InvalidInput(f"--limit must be between 1 and 1000, got {limit}")
    with open_bench(db) as bench:
        if last:
            found = bench.store.run(integrity_sql.last_report)
            if found is None:
                raise InvalidInput("no integrity report yet: run `wtb integrity check` first")
        else:
            listed = bench.store.run(integrity_sql.reports, limit)
    if last:
        print(json.dumps(found)) if json_out else _show(found)
        return
    if json_out:
        print(json.dumps({"reports": listed}))
        return
    table = Table("id", "started", "trigger", "repair", "found", "repaired", box=None,
                  pad_edge=False)
    for r in listed:
        table.add_row(str(r["id"]), when(r["started_at"]), r["trigger"],
                      "yes" if r["repair"] else "no", str(r["found"]), str(r["repaired"]))
    out.print(table)


def _show(report: dict[str, Any]) -> None:
    took = report["finished_at"] - report["started_at"]
    out.print(f"integrity report {report['id']} ({when(report['started_at'])}, {took:.1f} s, "
              f"{'check and repair' if report['repair'] else 'check only'}): "
              f"{report['found']} finding(s), {report['repaired']} repaired", highlight=False)
    counts = {k: c for k, c in report["counts"].items() if c["found"]}
    if not counts:
        return
    table = Table("kind", "found", "repaired", box=None, pad_edge=False)
    for kind, c in counts.items():
        table.add_row(kind, str(c["found"]), str(c["repaired"]))
    out.print(table)
    for f in report["findings"][:SHOWN]:
        out.print(f"{f['kind']}  {_ids(f['ids'])}\n    {f['detail']}"
                  + (f"\n    repair: {f['repair']}" if f["repair"] else ""),
                  highlight=False, markup=False)
    if report["found"] > SHOWN:
        err.print(f"(first {SHOWN} of {report['found']} shown; --json lists up to 1000 of "
                  "each kind)", highlight=False)


def _ids(ids: dict[str, Any]) -> str:
    def text(value: Any) -> str:
        if isinstance(value, dict):
            return ",".join(f"{k}:{v}" for k, v in value.items())
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    return " ".join(f"{k}={text(v)}" for k, v in ids.items() if v is not None)
