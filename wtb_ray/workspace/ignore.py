"""Which workspace paths are not tracked: a subset of gitignore patterns.

``name`` or ``*.log`` matches that name at any depth; a pattern containing ``/`` (``data/raw``,
``/build``) is matched against the whole path from the workspace root; a trailing ``/`` matches
directories only. ``*`` and ``?`` are fnmatch wildcards (``*`` also crosses ``/``). As in git,
``!pattern`` tracks again what an earlier pattern ignored (the last pattern that matches a path
decides), except inside an ignored directory, which is never looked into. Ignored paths are
neither recorded nor touched by a restore. ``.wtb`` at the root, where WTB keeps its stat
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
        # (regex, directories only, matched against the whole path, negated)
        self._rules: list[tuple[re.Pattern[str], bool, bool, bool]] = []
        for raw in patterns:
            if not isinstance(raw, str):
                raise InvalidInput(f"ignore pattern must be a string, got {raw!r}")
            pattern = raw.strip()
            if not pattern or pattern.startswith("#"):
                continue
            negated = pattern.startswith("!")
            # As in git, a leading backslash makes "!" or "#" part of the name.
            body = pattern[1:] if negated or pattern.startswith("\\") else pattern
            dir_only = body.endswith("/")
            body = body.rstrip("/")
            anchored = "/" in body
            body = body.lstrip("/")
            if not body:
                raise InvalidInput(f"ignore pattern {raw!r} matches nothing")
            self.patterns.append(pattern)
            self._rules.append((re.compile(fnmatch.translate(body)), dir_only, anchored,
                                negated))
        self._negations = any(rule[3] for rule in self._rules)

    def ignored(self, rel: str, name: str, is_dir: bool) -> bool:
        """``rel``: the path from the workspace root with ``/`` separators."""
        if rel == RESERVED:
            return True
        verdict = False
        for regex, dir_only, anchored, negated in self._rules:
            # Only a rule that would change the verdict is worth matching.
            if negated != verdict or (dir_only and not is_dir):
                continue
            if regex.match(rel if anchored else name):
                if not self._negations:
                    return True  # nothing later can track it again
                verdict = not negated
        return verdict
