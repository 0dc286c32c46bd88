"""Example workflow with files: a short report written into the run's workspace.

    gather -> draft -> review -> END

``gather`` copies the bundled astronomy documents that mention ``state["topic"]`` into
``sources/``; ``draft`` writes ``report.md`` from them; ``review`` rewrites the report with a
summary line, records ``review.json`` and removes ``sources/``. So its checkpoints hold files
created, modified and deleted, for trying ``wtb files``, ``wtb diff``, rollback and fork.
Variants: draft = default (one sentence per source) | detailed (each source's whole text).
Pure Python, no network. Reference: ``wtb_ray.examples.report:workflow``; run it with a
workspace: ``wtb run wtb_ray.examples.report:workflow --workspace ./report-ws``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from wtb_ray import END, Node, Variant, Workflow
from wtb_ray.examples.rag import corpus

MAX_SOURCES = 5


def _workspace(ctx: Any) -> Path:
    if ctx.workspace is None:
        raise ValueError("this workflow writes files: run it with a workspace (wtb run ... "
                         "--workspace DIR, workspace=True, or workspace: true in a batch)")
    return ctx.workspace


def gather(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    topic = str(state.get("topic", "moon")).strip().lower()
    if not topic:
        raise ValueError("state key 'topic' is empty")
    pattern = re.compile(rf"\b{re.escape(topic)}", re.IGNORECASE)
    found = [d for d in corpus() if pattern.search(d["title"] + " " + d["text"])]
    sources = _workspace(ctx) / "sources"
    sources.mkdir(exist_ok=True)
    for doc in found[:MAX_SOURCES]:
        (sources / f"{doc['id']}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n")
    return {"topic": topic, "sources": [d["id"] for d in found[:MAX_SOURCES]]}


def draft(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    ws = _workspace(ctx)
    lines = [f"# {state['topic'].title()}", ""]
    for name in state["sources"]:
        title, _, text = (ws / "sources" / f"{name}.txt").read_text().partition("\n\n")
        text = text.strip()
        if not ctx.params["whole"]:
            text = text.split(". ")[0].rstrip(".") + "."
        lines.append(f"- **{title}**: {text}")
    if not state["sources"]:
        lines.append(f"Nothing in the corpus mentions {state['topic']!r}.")
    (ws / "report.md").write_text("\n".join(lines) + "\n")
    return {"stage": "drafted"}


def review(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    ws = _workspace(ctx)
    report = (ws / "report.md").read_text()
    words = len(report.split())
    title, _, body = report.partition("\n")
    count = len(state["sources"])
    summary = f"_{count} source{'' if count == 1 else 's'}, {words} words._"
    (ws / "report.md").write_text(f"{title}\n\n{summary}\n{body}")
    (ws / "review.json").write_text(json.dumps({"words": words,
                                                "sources": state["sources"]}) + "\n")
    shutil.rmtree(ws / "sources")  # cited in the report: the copies are not kept
    return {"stage": "reviewed", "words": words}


workflow = Workflow(
    "astro-report",
    nodes={"gather": gather,
           "draft": Node(draft, params={"whole": False},
                         variants={"detailed": Variant(params={"whole": True})}),
           "review": review},
    edges={"gather": "draft", "draft": "review", "review": END},
    entry="gather",
)
