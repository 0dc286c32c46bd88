"""The live state of a run and what to store for it at the next checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wtb_ray.domain.errors import InvalidInput, SerializationError
from wtb_ray.storage import codec
from wtb_ray.storage.rows import dumps
from wtb_ray.storage.schema import FULL_MANIFEST_EVERY
from wtb_ray.storage.store import CheckpointWrite


class TrackedState:
    """State values plus the manifest entry (content address) of each top-level key.

    Only keys an update touches are serialized and hashed; the rest keep their entry, so an
    unchanged value costs nothing to checkpoint again.
    """

    def __init__(self, values: dict[str, Any], manifest: dict[str, str], since_full: int) -> None:
        self.values = values
        self.manifest = manifest
        self.since_full = since_full

    @classmethod
    def empty(cls) -> TrackedState:
        return cls({}, {}, FULL_MANIFEST_EVERY)  # the first checkpoint is always full

    def checkpoint(self, update: Mapping[str, Any] | None, *, node: str, parent_id: int | None,
                   step: int, kind: str, next_node: str | None,
                   full: bool = False) -> CheckpointWrite:
        """Apply ``update`` and describe the checkpoint that records the result."""
        delta: dict[str, str] = {}
        new_blobs: dict[str, tuple[str, str, int, bytes]] = {}
        for key, value in (update or {}).items():
            if not isinstance(key, str):
                raise SerializationError(node, repr(key), "state keys must be strings")
            try:
                data = codec.encode(value)
            except codec.EncodeError as exc:
                raise SerializationError(node, key, str(exc)) from None
            entry = codec.manifest_entry(data)
            if self.manifest.get(key) != entry:
                delta[key] = entry
                if not codec.is_inline(entry) and entry not in new_blobs:
                    packed_codec, payload = codec.pack(data)
                    new_blobs[entry] = (entry, packed_codec, len(data), payload)
        for key, value in (update or {}).items():
            self.values[key] = value
        self.manifest.update(delta)
        is_full = full or self.since_full + 1 >= FULL_MANIFEST_EVERY
        self.since_full = 0 if is_full else self.since_full + 1
        return CheckpointWrite(
            parent_id=parent_id, step=step, kind=kind, node=node if kind == "node" else None,
            next_node=next_node, is_full=is_full,
            manifest=dumps(self.manifest if is_full else delta), blobs=list(new_blobs.values()))


def parse_update(node: str, result: Any) -> Mapping[str, Any]:
    """A node returns a mapping of state updates or None; anything else is a node error."""
    if result is None:
        return {}
    if isinstance(result, Mapping):
        return result
    raise InvalidInput(f"node {node!r} returned {type(result).__name__}; a node returns a "
                       "mapping of state updates or None")


def as_state(value: Any, what: str) -> dict[str, Any]:
    """A caller-given state mapping (input, patch), checked: a mapping with string keys."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise InvalidInput(f"{what}: state keys must be strings, got {bad[0]!r}")
    return dict(value)
