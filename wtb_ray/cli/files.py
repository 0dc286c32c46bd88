"""`wtb files` (a checkpoint's workspace tree) and `wtb diff` (two checkpoints compared, or a
checkpoint and its workspace directory as it is now)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from wtb_ray.cli.common import DbOpt, JsonOpt, app, guarded, open_bench, out
from wtb_ray.engine.diff import TEXT_DIFF_TOTAL


@app.command()
@guarded
def files(execution_id: str,
          at: Annotated[int | None, typer.Option("--at", metavar="CHECKPOINT_ID",
                                                    help="Default: the execution's head.")] = None,
          json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """The workspace files recorded at a checkpoint."""
    with open_bench(db) as bench:
        ex = bench.get(execution_id)
        checkpoint = ex.head_checkpoint_id if at is None else at
        items = bench.files(ex.id, checkpoint)
        if json_out:
            print(json.dumps({"execution_id": ex.id, "checkpoint_id": checkpoint,
                              "workspace": ex.workspace["path"], "files": items}))
            return
        table = Table("path", "type", "size", "mode", "content", box=None, pad_edge=False,
                      title=f"{ex.workspace['path']} at checkpoint {checkpoint}",
                      title_justify="left")
        for f in items:
            detail = f.get("target") or (f.get("hash") or "")[:12]
            table.add_row(f["path"] + ("/" if f["type"] == "dir" else ""), f["type"],
                          str(f.get("size", "")), f.get("mode", ""), detail)
        out.print(table, markup=False, highlight=False)


def _print_diff(result: dict[str, Any]) -> None:
    changes = result["files"]
    state = result["state"] or {"added": {}, "removed": {}, "changed": {}}  # None: a directory
    other = (str(result["b"]) if result["b"] is not None
             else f"workspace {result['workspace']} (as it is now)")
    out.print(f"checkpoint {result['a']} -> {other}", highlight=False)
    if not any(state.values()) and not any(changes.values()):
        out.print("no differences", highlight=False)
    for key, value in state["added"].items():
        out.print(f"+ state {key} = {_short(value)}", markup=False, highlight=False)
    for key, value in state["removed"].items():
        out.print(f"- state {key} = {_short(value)}", markup=False, highlight=False)
    for key, change in state["changed"].items():
        a, b = _short(change["a"]), _short(change["b"])
        one_line = len(a) + len(b) <= 100 and not any(
            isinstance(v, str) and "\n" in v for v in (change["a"], change["b"]))
        if change["diff"] and not one_line:  # a short one-line text reads best as a -> b
            out.print(f"~ state {key}", markup=False, highlight=False)
            out.print(change["diff"], markup=False, highlight=False, end="")
            continue
        out.print(f"~ state {key}: {a} -> {b}" if one_line
                  else f"~ state {key}\n  {a}\n  -> {b}", markup=False, highlight=False)
    for sign, items in (("+", changes["added"]), ("-", changes["removed"])):
        for item in items:  # a directory shows only when empty (tree.TreeReader.diff)
            name = f"dir {item['path']}/" if item["type"] == "dir" else f"file {item['path']}"
            out.print(f"{sign} {name}", markup=False, highlight=False)
    for item in changes["changed"]:
        if item["diff"]:
            a, b = item["a"], item["b"]
            mode = f"  (mode {a['mode']} -> {b['mode']})" if a["mode"] != b["mode"] else ""
            out.print(f"~ file {item['path']}{mode}", markup=False, highlight=False)
            out.print(item["diff"], markup=False, highlight=False, end="")
        else:  # binary, too large for a text diff, or only its mode or type changed
            out.print(f"~ file {item['path']}  ({_what_changed(item)})",
                      markup=False, highlight=False)
    if result["text_diffs_left_out"]:
        out.print(f"({result['text_diffs_left_out']} changed file(s) shown without a text diff: "
                  f"a diff reads at most {TEXT_DIFF_TOTAL >> 20} MiB of changed files)",
                  highlight=False)


def _short(value: Any, limit: int = 200) -> str:
    """A state value as JSON on one line, cut at ``limit`` characters (marked)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _what_changed(item: dict[str, Any]) -> str:
    """What differs between the two descriptions of a changed path (engine.diff.describe)
    with no text diff to show."""
    a, b = item["a"], item["b"]
    if a["type"] != b["type"]:
        return f"{a['type']} -> {b['type']}"
    if a["type"] == "symlink":
        return f"target {a['target']} -> {b['target']}"
    parts = []
    if a.get("hash") != b.get("hash"):
        why = ("past the diff's text limit" if item.get("diff_left_out")
               else "binary or too large")
        parts.append(f"content: {a['size']} -> {b['size']} bytes, no text diff ({why})")
    if a.get("mode") != b.get("mode"):
        parts.append(f"mode {a['mode']} -> {b['mode']}")
    return "; ".join(parts)


@app.command()
@guarded
def diff(checkpoint_a: Annotated[str, typer.Argument(metavar="CHECKPOINT_A")],
         checkpoint_b: Annotated[str | None, typer.Argument(metavar="CHECKPOINT_B")] = None,
         json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Which state keys and workspace files differ between two checkpoints. With one: which
    files differ between it and its execution's workspace directory as it is now (after
    the head checkpoint: the changes made by hand that a resume would ask about)."""
    with open_bench(db) as bench:
        result = (bench.diff(checkpoint_a, checkpoint_b) if checkpoint_b is not None
                  else bench.diff_workspace(checkpoint_a))
        if json_out:
            print(json.dumps(result))
        else:
            _print_diff(result)
