"""Naming a few of many things in one line of a message."""

from __future__ import annotations

from collections.abc import Sequence


def some(items: Sequence[str], shown: int, total: int | None = None) -> str:
    """The first ``shown`` items, then "and N more" for the rest of ``total`` (default: all
    the items)."""
    named = list(items[:shown])
    rest = (len(items) if total is None else total) - len(named)
    return ", ".join(named) + (f" and {rest} more" if rest > 0 else "")
