"""Example workflow: question answering over a small bundled astronomy corpus.

    prepare -> retrieve -(grade)-> rerank -> answer -> END
                  ^          \\
                  +- broaden <+   (when nothing matched: widen the query, at most twice)

Variants: retrieve = keyword | bm25; rerank = default | sentence; answer = default (best
sentence) | lead (first sentence of the top document). Everything is pure Python over
``data/corpus.json``: no network, no model downloads. Reference: ``wtb_ray.examples.rag:workflow``.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from wtb_ray import END, Node, Route, Variant, Workflow

STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "by", "does", "for", "from", "has", "have",
    "how", "in", "is", "it", "its", "many", "of", "on", "or", "the", "to", "was", "what",
    "when", "where", "which", "who", "why", "with",
])
SYNONYMS = {
    "biggest": ["largest"], "big": ["largest"], "hot": ["hottest"], "warmest": ["hottest"],
    "high": ["tallest"], "highest": ["tallest"], "far": ["farthest"], "furthest": ["farthest"],
    "satellites": ["moons"], "satellite": ["moon"], "mountain": ["volcano"],
    "reclassified": ["dwarf"], "demoted": ["reclassified", "dwarf"],
}


@lru_cache(maxsize=1)
def corpus() -> list[dict[str, Any]]:
    text = resources.files("wtb_ray.examples").joinpath("data/corpus.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def _docs() -> dict[str, dict[str, Any]]:
    return {d["id"]: {**d, "terms": terms(d["title"] + " " + d["text"])} for d in corpus()}


def terms(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


# -- nodes ------------------------------------------------------------------------------

def prepare(state, ctx):
    question = state.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("input needs a non-empty 'question' string")
    return {"query_terms": terms(question), "broaden_rounds": 0}


def keyword_retrieve(state, ctx):
    query = set(state["query_terms"])
    scored = [{"id": d["id"], "score": float(len(query & set(d["terms"])))}
              for d in _docs().values()]
    return {"candidates": _top(scored, ctx.params.get("k", 3))}


def bm25_retrieve(state, ctx):
    k1, b = ctx.params.get("k1", 1.2), ctx.params.get("b", 0.75)
    docs = list(_docs().values())
    avg_len = sum(len(d["terms"]) for d in docs) / len(docs)
    scored = []
    for d in docs:
        score = 0.0
        for term in set(state["query_terms"]):
            tf = d["terms"].count(term)
            if not tf:
                continue
            df = sum(1 for other in docs if term in other["terms"])
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d["terms"]) / avg_len))
        scored.append({"id": d["id"], "score": round(score, 6)})
    return {"candidates": _top(scored, ctx.params.get("k", 3))}


def _top(scored: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    ranked = sorted(scored, key=lambda c: (-c["score"], c["id"]))
    return [c for c in ranked[:k] if c["score"] > 0]


def grade(state) -> str:
    """Widen the query when nothing matched, at most twice; otherwise go on."""
    if not state["candidates"] and state.get("broaden_rounds", 0) < 2:
        return "broaden"
    return "rerank"


def broaden(state, ctx):
    extra = [syn for t in state["query_terms"] for syn in SYNONYMS.get(t, [])]
    widened = list(dict.fromkeys([*state["query_terms"], *extra, *(t.rstrip("s") for t in
                                                                  state["query_terms"])]))
    return {"query_terms": widened, "broaden_rounds": state.get("broaden_rounds", 0) + 1}


def keep_order(state, ctx):
    return {"context": [c["id"] for c in state["candidates"][: ctx.params.get("n", 2)]]}


def sentence_rerank(state, ctx):
    """Re-score each candidate by its single best-matching sentence (precision over recall)."""
    query = set(state["query_terms"])
    rescored = []
    for c in state["candidates"]:
        best = max((len(query & set(terms(s))) for s in sentences(_docs()[c["id"]]["text"])),
                   default=0)
        rescored.append({"id": c["id"], "score": best + c["score"] / 100})
    ranked = sorted(rescored, key=lambda c: (-c["score"], c["id"]))
    return {"context": [c["id"] for c in ranked[: ctx.params.get("n", 2)]]}


def best_sentence_answer(state, ctx):
    query = set(state["query_terms"])
    best, best_score, source, read = "", -1, None, 0
    for doc_id in state["context"]:
        for s in sentences(_docs()[doc_id]["text"]):
            words = terms(s)
            read += len(words)
            score = len(query & set(words))
            if score > best_score:
                best, best_score, source = s, score, doc_id
    ctx.report(tokens=read)
    return _answer(best, source)


def lead_answer(state, ctx):
    if not state["context"]:
        return _answer("", None)
    doc_id = state["context"][0]
    first = sentences(_docs()[doc_id]["text"])[0]
    ctx.report(tokens=len(terms(first)))
    return _answer(first, doc_id)


def _answer(text: str, source: str | None) -> dict[str, Any]:
    if not text:
        return {"answer": "I don't know.", "sources": []}
    return {"answer": text, "sources": [source]}


workflow = Workflow(
    "astro-qa",
    version="1",
    description="Answer astronomy questions from a small bundled corpus.",
    nodes={
        "prepare": Node(prepare, description="tokenize the question"),
        "retrieve": Node(keyword_retrieve, params={"k": 3},
                         variants={"bm25": Variant(bm25_retrieve)},
                         description="find candidate documents"),
        "broaden": Node(broaden, description="widen the query with synonyms"),
        "rerank": Node(keep_order, params={"n": 2}, variants={"sentence": sentence_rerank},
                       description="choose the context documents"),
        "answer": Node(best_sentence_answer, variants={"lead": lead_answer},
                       description="extract the answer sentence"),
    },
    edges={
        "prepare": "retrieve",
        "retrieve": Route(grade, ["broaden", "rerank"]),
        "broaden": "retrieve",
        "rerank": "answer",
        "answer": END,
    },
    entry="prepare",
    max_steps=20,
)
