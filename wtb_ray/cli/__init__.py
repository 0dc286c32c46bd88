"""The ``wtb`` command. Thin: parse, call the library, print.

Exit codes: 0 done (completed, paused, ...); 1 the execution failed; 2 bad input or a refused
action (one line on stderr naming the problem; nothing is written); 130 interrupted.
Each topic registers its subcommands on the shared app in a module of its own.
"""

import os
import sys

from wtb_ray.cli import (  # noqa: F401 - registers the subcommands
    batch,
    db,
    demo,
    executions,
    files,
    gc,
    integrity,
    outbox,
    serving,
)
from wtb_ray.cli.common import app


def main() -> None:
    # `wtb run flows:wf` imports flows.py from the directory it is run in, as `python -m`,
    # uvicorn or pytest would (an installed script's import path starts at its own bin
    # directory); a local Ray instance's workers get the same directory (actors/client.py).
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    app(prog_name="wtb")
