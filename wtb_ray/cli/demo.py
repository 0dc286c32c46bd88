"""`wtb demo`: the bundled batch on a local Ray instance and the embedded SQLite database."""

from __future__ import annotations

import json
from importlib import resources

from wtb_ray.cli.batch import _checked_spec, run_and_show
from wtb_ray.cli.batch_view import leaderboard_table
from wtb_ray.cli.common import DbOpt, JsonOpt, app, guarded, out
from wtb_ray.config import Settings


@app.command()
@guarded
def demo(json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Run every variant combination of the example workflow over its cases, on Ray."""
    settings = Settings().with_database(db)
    spec_file = resources.files("wtb_ray.examples").joinpath("astro_batch.yaml")
    with resources.as_file(spec_file) as path:
        spec = _checked_spec(path)
    if not json_out:
        out.print(f"Running {len(spec.choices())} variant combinations x {len(spec.cases)} "
                  f"cases of {spec.workflow} on a local Ray instance\n"
                  f"database: {settings.url}\n", highlight=False)
    final = run_and_show(spec, settings, None, json_out)
    if json_out:
        print(json.dumps(final))
        return
    out.print(leaderboard_table(final["leaderboard"]))
    _show_next_steps(settings, final["batch"]["id"])


def _show_next_steps(settings: Settings, batch_id: str) -> None:
    from wtb_ray.batch.service import BatchService
    from wtb_ray.engine.bench import Bench

    with Bench.open(settings) as bench:
        cells = BatchService(bench).batches.results(batch_id)
    failing = next((c for c in cells if not c["passed"]), cells[0] if cells else None)
    if failing is None:
        return
    ex = failing["execution_id"]
    out.print(f"\nEvery cell is a durable execution. Take one that failed its check "
              f"(case {failing['case_id']}):\n"
              f"  wtb show {ex}                           # node runs, state, usage\n"
              f"  wtb checkpoints {ex}                    # the checkpoint tree\n"
              f"  wtb rollback {ex} --to answer           # back to before `answer` ran\n"
              f"  wtb resume {ex} --variant answer=default\n"
              f"  wtb fork {ex} --variant answer=default  # or try it on a new branch\n"
              f"More: wtb batch results {batch_id} --format csv", highlight=False)
