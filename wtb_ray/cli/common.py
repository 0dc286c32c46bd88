"""What every ``wtb`` subcommand shares: the Typer app, options, parsing, error handling."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from wtb_ray import render
from wtb_ray.config import Settings
from wtb_ray.domain.errors import InvalidInput, WTBError
from wtb_ray.domain.execution import Execution, Status

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="WTB - Workflow Test Bench: durable, forkable workflow runs.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")

# Rich lays tables out in 80 columns when the output is no terminal (a pipe, a file, a Ray
# job's log), folding a leaderboard's cells over three lines each; there, unless COLUMNS says
# otherwise, a table is as wide as its content, up to PIPE_WIDTH.
PIPE_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not (stream is not None and stream.isatty()) and "COLUMNS" not in os.environ
    return Console(stderr=stderr, soft_wrap=True, width=PIPE_WIDTH if piped else None)


out = _console()
err = _console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", metavar="URL", help="Database URL (overrides WTB_DATABASE_URL).")]
VariantOpt = Annotated[list[str] | None, typer.Option(
    "--variant", metavar="NODE=NAME", help="Use variant NAME for NODE (repeatable).")]
PatchOpt = Annotated[str | None, typer.Option(
    "--patch", metavar="JSON", help="State keys to overwrite, as a JSON object (or @file).")]


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WTBError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def parse_json(text: str | None, option: str) -> Any:
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise InvalidInput(f"{option}: cannot read {text[1:]!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{option} is not valid JSON: {exc}") from None


def parse_variants(items: list[str] | None) -> dict[str, str]:
    choice: dict[str, str] = {}
    for item in items or []:
        node, sep, name = item.partition("=")
        if not sep or not node or not name:
            raise InvalidInput(f"--variant expects NODE=NAME, got {item!r}")
        choice[node] = name
    return choice


@contextmanager
def open_bench(db: str | None):
    from wtb_ray.engine.bench import Bench

    with Bench.open(Settings().with_database(db)) as bench:
        yield bench


def follow(bench: Any, quiet: bool) -> None:
    """Progress on stderr: the execution id at once, then one line per node."""

    def show(event: Any) -> None:
        if event.kind == "execution.created":
            err.print(f"execution {event.execution_id} created", highlight=False)
        elif not quiet and event.kind == "node.completed":
            d = event.data
            err.print(f"  step {d['step']:>3}  {event.node} [{d['variant']}]  "
                      f"{d['ms']:.1f} ms", highlight=False,
                      markup=False)
        elif not quiet and event.kind == "node.retried":
            err.print(f"  retry {event.node}: {event.data['error']}", highlight=False,
                      markup=False)

    bench.bus.subscribe(show, {"execution.created", "node.completed", "node.retried"})


def finish(bench: Any, ex: Execution, as_json: bool) -> None:
    state = bench.state(ex.id)
    if as_json:
        print(json.dumps({"execution": ex.to_dict(), "state": state}, default=str))
    else:
        render.execution(out, ex, state)
        hints = {Status.PAUSED: f"resume with: wtb resume {ex.id}",
                 Status.FAILED: f"fix the node, then: wtb resume {ex.id}"}
        if ex.status in hints:
            err.print(hints[ex.status], highlight=False)
    if ex.status is Status.FAILED:
        raise typer.Exit(1)


@contextmanager
def interruptible(bench: Any):
    try:
        yield
    except KeyboardInterrupt:
        err.print("interrupted: the execution is paused at its last checkpoint "
                  "(wtb resume ID continues it)")
        raise typer.Exit(130) from None


