"""A workflow for batches with workspaces: each node appends to notes.txt; ``flaky`` first
leaves a stray file and a half-written line, then raises (``fail_once``) or waits to be killed
(``hold``), on the first attempt of cases that ask for it (an attempt is told apart by a
marker file outside the workspace)."""

import time
from pathlib import Path

from wtb_ray import END, Node, Variant, Workflow


def note(ctx, line: str) -> None:
    with open(ctx.workspace / "notes.txt", "a") as f:
        f.write(line + "\n")


def start(state, ctx):
    note(ctx, f"start {state['case']} variant={ctx.variant}")
    (ctx.workspace / "data").mkdir(exist_ok=True)
    (ctx.workspace / "data" / "input.json").write_text(f'{{"case": "{state["case"]}"}}\n')
    return {"started": True}


def flaky(state, ctx):
    marker = Path(state["markers"]) / f"{state['case']}-{ctx.execution_id}"
    if (state.get("fail_once") or state.get("hold")) and not marker.exists():
        marker.touch()
        (ctx.workspace / "stray.tmp").write_text("left by a failed attempt\n")
        note(ctx, "flaky half-")
        if state.get("hold"):  # until the test has killed this process
            hold(Path(state["markers"]))
        raise RuntimeError("flaky: first attempt fails after writing")
    note(ctx, f"flaky {state['case']}")
    return {"flaky_done": True}


def hold(where: Path) -> None:
    """Say so in ``where``/held.waiting, then wait for ``where``/held.go."""
    (where / "held.waiting").touch()
    deadline = time.time() + 120
    while not (where / "held.go").exists():
        if time.time() > deadline:
            raise TimeoutError("held for 120 s")
        time.sleep(0.02)


def finish(state, ctx):
    note(ctx, f"finish {ctx.params['tag']}")
    (ctx.workspace / "data" / "input.json").unlink()
    return {"lines": (ctx.workspace / "notes.txt").read_text().count("\n")}


workflow = Workflow(
    "notes",
    nodes={"start": start, "flaky": flaky,
           "finish": Node(finish, params={"tag": "plain"},
                          variants={"loud": Variant(finish, params={"tag": "LOUD"})})},
    edges={"start": "flaky", "flaky": "finish", "finish": END},
    entry="start")
