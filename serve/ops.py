"""/v1/workflows, /healthz (no token) and /metrics."""

from __future__ import annotations

from typing import Any

import ray
from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from serve.auth import require_token
from serve.context import Ctx
from serve.errors import error

router = APIRouter()


@router.get("/v1/workflows", tags=["workflows"], dependencies=[Depends(require_token)])
def workflows(ctx: Ctx) -> dict[str, Any]:
    """The workflows this server may run, with their nodes and variants."""
    listed = []
    for name in sorted(ctx.settings.workflows):
        try:
            listed.append({"name": name, **ctx.workflow(name).describe()})
        except Exception as exc:  # a broken registration must not hide the others
            listed.append({"name": name, "ref": ctx.settings.workflows[name],
                           "error": f"{type(exc).__name__}: {exc}"})
    return {"workflows": listed}


@router.get("/healthz", tags=["operations"])
def healthz(ctx: Ctx) -> Any:
    """Whether the database and the orchestrator answer (no token needed)."""
    report: dict[str, str] = {}
    try:
        with ctx.bench.store.read() as conn:
            conn.execute(text("SELECT 1"))
        report["database"] = "ok"
    except Exception as exc:
        report["database"] = f"{type(exc).__name__}: {exc}"
    try:
        ray.get(ctx.orchestrator().boot.remote(), timeout=5)
        report["orchestrator"] = "ok"
    except Exception as exc:
        report["orchestrator"] = f"{type(exc).__name__}: {exc}"
    if all(v == "ok" for v in report.values()):
        return {"status": "ok", **report}
    return error(503, "; ".join(f"{k}: {v}" for k, v in report.items() if v != "ok"))


@router.get("/metrics", tags=["operations"], dependencies=[Depends(require_token)],
            response_class=Response)
def metrics(ctx: Ctx) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)
