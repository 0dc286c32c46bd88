"""The HTTP API as a Ray Serve application: one FastAPI ingress deployment.

    serve run cluster/serve.yaml        # or: wtb serve
Everything but /healthz needs `Authorization: Bearer <token>` (see serve.auth).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from ray import serve

from serve import batches, context, diffs, errors, events, executions, ops
from serve.auth import require_token
from serve.metrics import StoreCollector
from wtb_ray import __version__
from wtb_ray.config import Settings

api = FastAPI(title="WTB - Workflow Test Bench", version=__version__,
              description="Submit and watch batches of variant combinations x cases; start, "
                          "pause, resume, roll back and fork executions.")
errors.install(api)
for router in (batches.router, executions.router, diffs.router, events.router):
    api.include_router(router, dependencies=[Depends(require_token)])
api.include_router(ops.router)


def openapi_with_registry() -> dict:
    """The schema, with ``workflow`` listing this server's registered names (Settings), so
    /docs and generated clients offer exactly what a request may name."""
    if api.openapi_schema is None:
        schema = FastAPI.openapi(api)
        names = sorted(context.current().settings.workflows)
        for model in ("BatchIn", "ExecutionIn"):
            schema["components"]["schemas"][model]["properties"]["workflow"]["enum"] = names
    return api.openapi_schema


api.openapi = openapi_with_registry


class CountRequests:
    """Requests by method, route template and status, for /metrics. Plain ASGI rather than
    @app.middleware: that one reads the body in a task group, which would turn the body
    limit's 413 into an exception group (and FastAPI into a 400)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            context.current().requests.labels(scope["method"], route, str(status)).inc()


class _LazyBodyLimit(errors.BodyLimit):
    """The body limit comes from Settings, which the replica reads when it starts."""

    def __init__(self, app) -> None:
        super().__init__(app, limit=0)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.limit = context.current().settings.api_max_body_bytes
        await super().__call__(scope, receive, send)


api.add_middleware(CountRequests)
api.add_middleware(_LazyBodyLimit)  # outermost: before anything reads the body


@serve.deployment(name="wtb-api", max_ongoing_requests=100)
@serve.ingress(api)
class Ingress:
    def __init__(self) -> None:
        state = context.Api(Settings())
        state.metrics.register(StoreCollector(state))
        context.install(state)
        state.warm()


app = Ingress.bind()
