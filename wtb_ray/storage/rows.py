"""Conversions between domain objects and table rows (JSON columns, enums)."""

from __future__ import annotations

import json
from typing import Any

from wtb_ray.domain.checkpoint import Checkpoint, NodeBoundary
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution, Status


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def execution_row(ex: Execution) -> dict[str, Any]:
    return {
        "id": ex.id,
        "workflow_ref": ex.workflow_ref,
        "workflow_name": ex.workflow_name,
        "workflow_version": ex.workflow_version,
        "status": ex.status.value,
        "variants": dumps(ex.variants),
        "breakpoints": dumps({"before": ex.break_before, "after": ex.break_after}),
        "head_checkpoint_id": ex.head_checkpoint_id,
        "step": ex.step,
        "control": ex.control,
        "error": dumps(ex.error) if ex.error else None,
        "parent_execution_id": ex.parent_execution_id,
        "forked_from_checkpoint_id": ex.forked_from_checkpoint_id,
        "batch_id": ex.batch_id,
        "lease_owner": ex.lease_owner,
        "lease_expires_at": ex.lease_expires_at,
        "attempts": ex.attempts,
        "version": ex.version,
        "labels": dumps(ex.labels),
        "created_at": ex.created_at,
        "updated_at": ex.updated_at,
        "workspace": dumps(ex.workspace) if ex.workspace else None,
    }


def execution_from_row(row: Any) -> Execution:
    m = row._mapping
    breakpoints = loads(m["breakpoints"]) or {}
    return Execution(
        id=m["id"],
        workflow_ref=m["workflow_ref"],
        workflow_name=m["workflow_name"],
        workflow_version=m["workflow_version"],
        status=Status(m["status"]),
        variants=loads(m["variants"]) or {},
        break_before=breakpoints.get("before", []),
        break_after=breakpoints.get("after", []),
        head_checkpoint_id=m["head_checkpoint_id"],
        step=m["step"],
        control=m["control"],
        error=loads(m["error"]),
        parent_execution_id=m["parent_execution_id"],
        forked_from_checkpoint_id=m["forked_from_checkpoint_id"],
        batch_id=m["batch_id"],
        lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"],
        attempts=m["attempts"],
        version=m["version"],
        labels=loads(m["labels"]) or {},
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        workspace=loads(m["workspace"]),
    )


def checkpoint_from_row(row: Any) -> Checkpoint:
    m = row._mapping
    return Checkpoint(id=m["id"], execution_id=m["execution_id"], parent_id=m["parent_id"],
                      step=m["step"], kind=m["kind"], node=m["node"], next_node=m["next_node"],
                      created_at=m["created_at"], workspace_tree=m["workspace_tree"])


def boundary_from_row(row: Any) -> NodeBoundary:
    m = row._mapping
    return NodeBoundary(
        id=m["id"], execution_id=m["execution_id"], step=m["step"], node=m["node"],
        variant=m["variant"], attempt=m["attempt"], entry_checkpoint_id=m["entry_checkpoint_id"],
        exit_checkpoint_id=m["exit_checkpoint_id"], status=m["status"],
        started_at=m["started_at"], duration_ms=m["duration_ms"], error=m["error"],
        usage=loads(m["usage"]),
    )


def audit_row(event: Event) -> dict[str, Any]:
    return {"execution_id": event.execution_id, "kind": event.kind, "node": event.node,
            "checkpoint_id": event.checkpoint_id,
            "detail": dumps(event.data) if event.data else None, "at": event.at}


def outbox_row(event: Event) -> dict[str, Any]:
    """Execution events are ordered per execution, batch events per batch (the aggregate)."""
    if event.kind.startswith("batch."):
        aggregate = ("batch", event.batch_id)
        data = {**event.data, "execution_id": event.execution_id} if event.execution_id else (
            event.data)
    else:
        aggregate, data = ("execution", event.execution_id), event.data
    return {"event_id": event.id, "aggregate_type": aggregate[0], "aggregate_id": aggregate[1],
            "kind": event.kind, "batch_id": event.batch_id, "node": event.node,
            "checkpoint_id": event.checkpoint_id, "payload": dumps(data), "status": "pending",
            "attempts": 0, "available_at": event.at, "created_at": event.at}


def event_from_outbox(row: Any) -> Event:
    m = row._mapping if hasattr(row, "_mapping") else row
    data = loads(m["payload"]) or {}
    execution_id = (m["aggregate_id"] if m["aggregate_type"] == "execution"
                    else data.pop("execution_id", ""))
    return Event(kind=m["kind"], execution_id=execution_id, node=m["node"],
                 checkpoint_id=m["checkpoint_id"], data=data, at=m["created_at"],
                 id=m["event_id"], batch_id=m["batch_id"])


def event_from_audit(row: Any) -> Event:
    m = row._mapping
    return Event(kind=m["kind"], execution_id=m["execution_id"], node=m["node"],
                 checkpoint_id=m["checkpoint_id"], data=loads(m["detail"]) or {}, at=m["at"],
                 id=f"audit-{m['id']}")
