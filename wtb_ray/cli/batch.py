"""`wtb batch run|submit|status|results|cancel|delete|list`.

run and submit go through Ray (the orchestrator actor); the others read the database only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from wtb_ray.cli.batch_view import (
    leaderboard_table,
    outage_line,
    progress_table,
    results_csv,
)
from wtb_ray.cli.common import DbOpt, JsonOpt, app, err, guarded, out
from wtb_ray.config import Settings
from wtb_ray.domain.errors import InvalidInput

batch_app = typer.Typer(no_args_is_help=True, help="Batches: variant combinations x cases.")
app.add_typer(batch_app, name="batch")

SpecArg = Annotated[Path, typer.Argument(help="Batch spec, YAML or JSON.")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster: auto or HOST:PORT. Default: start a local Ray instance.")]


def _service(db: str | None):
    from wtb_ray.batch.service import BatchService
    from wtb_ray.engine.bench import Bench

    return BatchService(Bench.open(Settings().with_database(db)))


def _checked_spec(path: Path):
    """Load and check the spec here, before anything runs anywhere."""
    from wtb_ray.batch.plan import check_against, plan_cells
    from wtb_ray.batch.spec import load_spec
    from wtb_ray.engine.loader import load_workflow

    spec = load_spec(path)
    check_against(spec, load_workflow(spec.workflow))
    plan_cells(spec)
    return spec


def run_and_show(spec, settings: Settings, address: str | None, as_json: bool) -> dict:
    """Submit through the orchestrator, show live progress, end with the leaderboard."""
    from actors import client

    where = client.connect(address)
    if where.get("dashboard_url") and not as_json:
        err.print(f"Ray dashboard: http://{where['dashboard_url']}", highlight=False)
    orchestrator, batch_id = client.submit(spec, settings)
    err.print(f"batch {batch_id} submitted", highlight=False)
    if as_json:
        told: list[float] = []

        def warn(error: str, since: float, last: dict | None) -> None:
            if since not in told:  # once per outage
                told.append(since)
                err.print(outage_line(error, since), highlight=False)

        final = client.follow(orchestrator, batch_id, lambda p: None, on_outage=warn)
    else:
        with Live(console=err, refresh_per_second=4, transient=False) as live:
            final = client.follow(
                orchestrator, batch_id, lambda p: live.update(progress_table(p)),
                on_outage=lambda error, since, last: live.update(Group(
                    *([progress_table(last)] if last else []),
                    Text(outage_line(error, since), style="yellow"))))
        if not err.is_terminal:
            err.print()  # off a terminal, Live leaves its last line unended
    import ray

    final["leaderboard"] = ray.get(orchestrator.leaderboard.remote(batch_id))
    return final


@batch_app.command("run")
@guarded
def run(spec_path: SpecArg, address: AddressOpt = None, json_out: JsonOpt = False,
        db: DbOpt = None) -> None:
    """Run a batch and wait: live progress per combination, then the leaderboard."""
    spec = _checked_spec(spec_path)
    final = run_and_show(spec, Settings().with_database(db), address, json_out)
    if json_out:
        print(json.dumps(final))
    else:
        out.print(leaderboard_table(final["leaderboard"]))


@batch_app.command("submit")
@guarded
def submit(spec_path: SpecArg,
           address: Annotated[str, typer.Option("--address", help="Ray cluster.")] = "auto",
           json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Submit a batch to a running Ray cluster and return its id at once."""
    from actors import client

    spec = _checked_spec(spec_path)
    client.connect(address)
    _, batch_id = client.submit(spec, Settings().with_database(db))
    print(json.dumps({"batch_id": batch_id}) if json_out else batch_id)


@batch_app.command("status")
@guarded
def status(batch_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Progress of a batch, per variant combination."""
    progress = _service(db).progress(batch_id)
    if json_out:
        print(json.dumps(progress))
    else:
        out.print(progress_table(progress))


@batch_app.command("results")
@guarded
def results(batch_id: str,
            format: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
            db: DbOpt = None) -> None:
    """The leaderboard and every cell's result."""
    if format not in ("table", "json", "csv"):
        raise InvalidInput(f"--format must be table, json or csv, got {format!r}")
    service = _service(db)
    batch = service.batches.get(batch_id)
    cells = service.batches.results(batch_id)
    if format == "csv":
        print(results_csv(cells), end="")
        return
    board = [r.to_dict() for r in service.leaderboard(batch_id)]
    if format == "json":
        print(json.dumps({"batch": batch.to_dict(), "leaderboard": board, "cells": cells}))
    else:
        out.print(leaderboard_table(board))
        worst = next((c for c in cells if not c["passed"]), None)
        if worst:
            err.print(f"a failing cell: wtb show {worst['execution_id']}  (then rollback, "
                      "resume --variant ..., or fork it)", highlight=False)


@batch_app.command("cancel")
@guarded
def cancel(batch_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Stop scheduling; cells not started are cancelled, running ones stop at a boundary."""
    batch = _service(db).batches.request_cancel(batch_id)
    if json_out:
        print(json.dumps({"batch": batch.to_dict()}))
    else:
        out.print(f"cancel requested for batch {batch.id} ({batch.status})", highlight=False)


@batch_app.command("delete")
@guarded
def delete(batch_id: str, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Delete a finished batch whole: its cells with their histories, results and events.
    `wtb gc` then frees the stored data only they used."""
    cells, left = _service(db).delete(batch_id)
    for problem in left:
        err.print(f"warning: could not remove {problem} (`wtb gc` removes the rest)",
                  highlight=False, markup=False)
    if json_out:
        print(json.dumps({"deleted": batch_id, "executions": len(cells),
                          "workspace_not_removed": left}))
    else:
        out.print(f"batch {batch_id} deleted with its {len(cells)} execution(s) (run `wtb gc` "
                  "to free their stored data)", highlight=False)


@batch_app.command("list")
@guarded
def list_batches(json_out: JsonOpt = False, db: DbOpt = None,
                 limit: Annotated[int, typer.Option(min=1, max=1000)] = 20) -> None:
    """The most recent batches."""
    batches = _service(db).batches.page(limit=limit)
    if json_out:
        print(json.dumps({"batches": [b.to_dict() for b in batches]}))
        return
    from rich.table import Table

    table = Table("id", "name", "status", "cells", "completed", "failed", "cancelled",
                  box=None, pad_edge=False)
    for b in batches:
        table.add_row(b.id, b.name, b.status, str(b.total), str(b.completed), str(b.failed),
                      str(b.cancelled))
    out.print(table)
