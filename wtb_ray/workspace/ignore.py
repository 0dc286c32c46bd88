"""Which workspace paths are not tracked: a subset of gitignore patterns.

``name`` or ``*.log`` matches that name at any depth; a pattern containing ``/`` (``data/raw``,
``/build``) is matched against the whole path from the workspace root; a trailing ``/`` matches
directories only. ``*`` and ``?`` are fnmatch wildcards (``*`` also crosses ``/``). Ignored paths
are neither recorded nor touched by a restore. ``.wtb`` at the root, where WTB keeps its stat
index, is always ignored.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from wtb_ray.domain.errors import InvalidInput

RESERVED = ".wtb"


class IgnoreRules:
    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: list[str] = []
        self._rules: list[tuple[re.Pattern[str], bool, bool]] = []
        for raw in patterns:
            if not isinstance(raw, str):
                raise InvalidInput(f"ignore pattern must be a string, got {raw!r}")
            pattern = raw.strip()
            if not pattern or pattern.startswith("#"):
                continue
            if pattern.startswith("!"):
                raise InvalidInput(f"ignore pattern {raw!r}: negation (!) is not supported")
            dir_only = pattern.endswith("/")
            body = pattern.rstrip("/")
            anchored = "/" in body
            body = body.lstrip("/")
            if not body:
                raise InvalidInput(f"ignore pattern {raw!r} matches nothing")
            self.patterns.append(pattern)
            self._rules.append((re.compile(fnmatch.translate(body)), dir_only, anchored))

    def ignored(self, rel: str, name: str, is_dir: bool) -> bool:
        """``rel``: the path from the workspace root with ``/`` separators."""
        if rel == RESERVED:
            return True
        for regex, dir_only, anchored in self._rules:
            if dir_only and not is_dir:
                continue
            if regex.match(rel if anchored else name):
                return True
        return False
