"""Undo actions for side effects: registered by nodes, run by rollback, exactly once each.

A node calls ``ctx.on_rollback(fn, *args)`` after causing a side effect. The action is stored
as an import reference (``module:qualname``) and canonical-JSON arguments, never pickled, in the
same transaction as the node's boundary. Rolling back past that boundary runs the actions of
the undone node runs newest first. Each is claimed (``started``) in a committed transaction
before it runs and marked ``done`` in another after it returns:

* a done action never runs again;
* an action interrupted between its claim and ``done`` (the rollback process was killed) runs
  again when the rollback is run again, with the same ``idempotency_key`` and a higher
  ``attempt``: an action that honours its key (or is idempotent, like deleting a known row)
  takes effect exactly once; any other takes effect at least once in that window only.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from wtb_ray.domain.checkpoint import Checkpoint
from wtb_ray.domain.errors import CompensationFailed, ConcurrencyConflict, InvalidInput
from wtb_ray.domain.events import EventBus
from wtb_ray.domain.execution import Execution
from wtb_ray.storage import codec
from wtb_ray.storage import compensation_sql as sql
from wtb_ray.storage.rows import dumps

KEY_PARAM = "idempotency_key"


def reference(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function another process can import, or InvalidInput."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    if not callable(fn) or not isinstance(getattr(fn, "__qualname__", None), str) or not module:
        raise InvalidInput(f"on_rollback needs a module-level function, got {name}: it is "
                           "stored by import reference (module:qualname), never pickled")
    if "<lambda>" in name:
        raise InvalidInput(f"on_rollback cannot store a lambda ({module}:{name}); define a "
                           "module-level function and pass what it needs as arguments")
    if "<locals>" in name:
        raise InvalidInput(f"on_rollback cannot store a closure or nested function "
                           f"({module}:{name}); define it at module level and pass what it "
                           "captures as arguments")
    if module == "__main__":
        raise InvalidInput(f"on_rollback cannot store {name} from __main__: another process "
                           "could not import it; move it into a module")
    ref = f"{module}:{name}"
    try:
        found = resolve(ref)
    except InvalidInput:
        found = None
    if found != fn:  # a bound method, or something the reference does not lead back to
        raise InvalidInput(f"on_rollback cannot store {ref}: importing that reference does "
                           "not give back the same function (bound methods cannot be stored)")
    return ref


def resolve(ref: str) -> Callable[..., Any]:
    module_name, _, qualname = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(f"cannot import compensation {ref}: {exc}") from None
    return target


def registration(fn: Callable[..., Any], args: tuple[Any, ...]) -> dict[str, Any]:
    """What the node boundary stores for ``ctx.on_rollback(fn, *args)``."""
    ref = reference(fn)
    try:
        data = codec.encode(list(args))
    except codec.EncodeError as exc:
        raise InvalidInput(f"on_rollback({ref}, ...): arguments must be JSON-family data: "
                           f"{exc}") from None
    return {"fn": ref, "args": data.decode(), "key": uuid.uuid4().hex}


def plan(store: Any, ex: Execution, target: Checkpoint) -> list[dict[str, Any]]:
    """The unfinished undo actions a rollback of ``ex`` to ``target`` runs, newest first:
    those of node runs that are not part of ``target``'s history. A run that completed is part
    of it if its exit checkpoint is ``target`` or an ancestor; a run that failed, if it started
    from a strict ancestor of ``target``."""
    rows = store.run(sql.of_execution, ex.id, unfinished=True)
    if not rows:
        return []
    parents = {c.id: c.parent_id for c in store.checkpoints(ex.id)}
    history: set[int] = set()
    cursor: int | None = target.id
    while cursor in parents and cursor not in history:
        history.add(cursor)
        cursor = parents[cursor]

    def undone(row: dict[str, Any]) -> bool:
        if row["checkpoint_id"] is not None:
            return row["checkpoint_id"] not in history
        return row["entry_checkpoint_id"] not in history - {target.id}

    return sorted(filter(undone, rows), key=lambda r: r["id"], reverse=True)


def _call(fn: Callable[..., Any], args: list[Any], key: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_key = KEY_PARAM in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    result = fn(*args, **({KEY_PARAM: key} if takes_key else {}))
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_all(store: Any, bus: EventBus, ex: Execution, owner: str,
            todo: list[dict[str, Any]]) -> None:
    """Run ``todo`` in order while ``owner`` holds ``ex`` (rolling back); raises
    CompensationFailed at the first action that raises, leaving the rest pending."""
    for row in todo:
        attempt = store.run(sql.claim, row["id"], ex.id, owner, time.time(), write=True)
        if attempt is None:
            raise ConcurrencyConflict(f"execution {ex.id}: lost the rollback to another "
                                      "process (lease expired)")
        try:
            _call(resolve(row["fn"]), json.loads(row["args"]), row["key"])
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": str(exc),
                     "traceback": "".join(traceback.format_exception(exc))[-4000:]}
            store.run(sql.fail, row["id"], dumps(error), write=True)
            raise CompensationFailed(ex.id, row["fn"], row["node"], row["step"],
                                     type(exc).__name__, str(exc)) from exc
        store.run(sql.finish, row["id"], time.time(), write=True)
        bus.publish([ex.event("compensation.completed", row["node"], row["checkpoint_id"],
                              fn=row["fn"], key=row["key"], attempt=attempt)])


def undo(store: Any, bus: EventBus, ex: Execution, target: Checkpoint,
         todo: list[dict[str, Any]], owner: str, lease_seconds: float) -> None:
    """Hold ``ex`` as ROLLING_BACK (leased to ``owner``) and run ``todo``. On failure the
    error is recorded and the lease released, the execution still ROLLING_BACK, so running
    the rollback again carries on; CompensationFailed is raised."""
    from wtb_ray.engine.runner import RELEASE
    from wtb_ray.storage.store import Change

    ex.apply("begin_rollback")
    ex.lease_owner, ex.lease_expires_at = owner, time.time() + lease_seconds
    committed = store.commit(Change(ex.id, [ex.event(
        "execution.rolling_back", None, target.id, to_checkpoint_id=target.id,
        compensations=len(todo))], {"status": ex.status.value, "error": None,
        "lease_owner": ex.lease_owner, "lease_expires_at": ex.lease_expires_at},
        fence_version=ex.version))
    ex.version = committed.version
    bus.publish(committed.events)
    try:
        run_all(store, bus, ex, owner, todo)
    except CompensationFailed as exc:
        error = {"node": exc.node, "type": "CompensationFailed", "message": str(exc)}
        committed = store.commit(Change(ex.id, [ex.event(
            "compensation.failed", exc.node, None, fn=exc.fn, step=exc.step,
            error=f"{exc.error_type}: {exc.error_message}")],
            {"error": dumps(error), **RELEASE}, fence_version=ex.version))
        bus.publish(committed.events)
        raise
