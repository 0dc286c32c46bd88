"""Human-readable output for the CLI (rich tables and trees)."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from wtb_ray.domain.checkpoint import Checkpoint, NodeBoundary
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution
from wtb_ray.domain.listing import some

STATUS_STYLE = {"completed": "green", "failed": "red", "paused": "yellow", "running": "cyan",
                "cancelled": "magenta", "pending": "white"}


EDITS_SHOWN = 5  # hand edits named by `wtb show` (the JSON lists them all)


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def status(value: str) -> str:
    return f"[{STATUS_STYLE.get(value, 'white')}]{value}[/]"


def execution(console: Console, ex: Execution, state: dict[str, Any] | None = None,
              boundaries: list[NodeBoundary] | None = None,
              edits: list[str] | None = None) -> None:
    """``edits``: changes made by hand to its workspace since its head (engine/edits.py)."""
    console.print(f"execution [bold]{ex.id}[/]  {status(ex.status.value)}  "
                  f"workflow {ex.workflow_name} ({ex.workflow_ref or 'no ref'})")
    variants = ", ".join(f"{n}={v}" for n, v in sorted(ex.variants.items())) or "all default"
    console.print(f"  step {ex.step}, head checkpoint {ex.head_checkpoint_id}, "
                  f"variants: {variants}", highlight=False)
    if ex.parent_execution_id:
        console.print(f"  forked from {ex.parent_execution_id} at checkpoint "
                      f"{ex.forked_from_checkpoint_id}")
    if ex.workspace:
        ignore = ex.workspace.get("ignore") or []
        console.print(f"  workspace {ex.workspace['path']}"
                      + (f" (ignoring {', '.join(ignore)})" if ignore else ""),
                      markup=False, highlight=False)
    if edits:
        shown = some(edits, EDITS_SHOWN)
        console.print(f"  [yellow]changed by hand[/] since checkpoint {ex.head_checkpoint_id}: "
                      f"{escape(shown)} (wtb diff {ex.head_checkpoint_id} shows them; resume "
                      "--keep-edits or --discard-edits; rollback --discard-edits)",
                      highlight=False)
    if ex.control:
        console.print(f"  [yellow]{ex.control} requested[/]: honoured at the next node boundary")
    if ex.error:
        console.print(f"  [red]error[/] in node {ex.error.get('node')!r}: "
                      f"{ex.error.get('type')}: {ex.error.get('message')}")
    if boundaries:
        table = Table("step", "node", "variant", "attempt", "status", "ms", "checkpoint",
                      "usage", title="node runs", title_justify="left", box=None,
                      pad_edge=False)
        for b in boundaries:
            usage = " ".join(f"{k}={v:g}" for k, v in (b.usage or {}).items())
            table.add_row(str(b.step), b.node, b.variant, str(b.attempt), status(b.status),
                          f"{b.duration_ms:.1f}", str(b.exit_checkpoint_id or "-"), usage)
        console.print(table)
    if state is not None:
        table = Table("key", "value", title="state at head", title_justify="left", box=None,
                      pad_edge=False)
        for key, value in state.items():
            text = json.dumps(value, ensure_ascii=False)
            table.add_row(key, text if len(text) <= 160 else text[:157] + "...")
        console.print(table, markup=False, highlight=False)


def checkpoint_tree(console: Console, ex: Execution, checkpoints: list[Checkpoint]) -> None:
    """The checkpoint tree; the branch leading to the head is bold, the head is marked."""
    by_id = {c.id: c for c in checkpoints}
    on_branch = branch_ids(ex.head_checkpoint_id, by_id)
    children: dict[int | None, list[Checkpoint]] = {}
    for c in checkpoints:
        parent = c.parent_id if c.parent_id in by_id else None
        children.setdefault(parent, []).append(c)

    def label(c: Checkpoint) -> str:
        what = {"start": "start", "node": f"after {c.node}", "patch": patch_label(c, by_id),
                "fork": f"fork of checkpoint {c.parent_id}"}[c.kind]
        text = f"{c.id}  step {c.step}  {what}  -> {c.next_node or 'END'}"
        if c.id == ex.head_checkpoint_id:
            text += "  [yellow]<- head[/]"
        return f"[bold]{text}[/]" if c.id in on_branch else f"[dim]{text}[/]"

    tree = Tree(f"execution {ex.id} ({len(checkpoints)} checkpoints)")

    def add(node: Tree, parent: int | None) -> None:
        for c in children.get(parent, []):
            add(node.add(label(c)), c.id)

    add(tree, None)
    console.print(tree)


def patch_label(c: Checkpoint, by_id: dict[int, Checkpoint]) -> str:
    """A patch checkpoint records a state patch (resume --patch), hand edits to its files
    kept (resume --keep-edits), or both: its files differ from its parent's in the last."""
    parent = by_id.get(c.parent_id) if c.parent_id is not None else None
    if parent is not None and c.workspace_tree != parent.workspace_tree:
        return "patch (files kept)"
    return "state patch"


def branch_ids(head: int | None, by_id: dict[int, Checkpoint]) -> set[int]:
    ids: set[int] = set()
    while head in by_id and head not in ids:
        ids.add(head)
        head = by_id[head].parent_id
    return ids


def history(console: Console, events: list[Event]) -> None:
    table = Table("time", "event", "node", "ckpt", "detail", box=None, pad_edge=False)
    for e in events:
        detail = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(e.data.items())
                          if v not in (None, {}, []))
        clock = time.strftime("%H:%M:%S", time.localtime(e.at)) + f".{int(e.at % 1 * 1000):03d}"
        table.add_row(clock, e.kind, e.node or "", str(e.checkpoint_id or ""), detail,
                      style="red" if e.kind.endswith(("failed", "refused")) else None)
    console.print(table, markup=False, highlight=False)


def executions(console: Console, items: list[Execution]) -> None:
    if not items:
        console.print("no executions")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True)  # ids are what the other commands take: never cut
    table.add_column("workflow", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("step", no_wrap=True, justify="right")
    table.add_column("updated", no_wrap=True)
    # Only the columns some row fills: a terminal of 80 columns still shows every id whole.
    forks = any(ex.parent_execution_id for ex in items)
    batches = any(ex.batch_id for ex in items)
    if forks:
        table.add_column("forked from", overflow="fold")
    if batches:
        table.add_column("batch", no_wrap=True)
    for ex in items:
        row = [ex.id, ex.workflow_name, status(ex.status.value), str(ex.step),
               time.strftime("%m-%d %H:%M:%S", time.localtime(ex.updated_at))]
        if forks:
            row.append(f"{ex.parent_execution_id} @{ex.forked_from_checkpoint_id}"
                       if ex.parent_execution_id else "")
        if batches:
            row.append(ex.batch_id or "")
        table.add_row(*row)
    console.print(table, highlight=False)
