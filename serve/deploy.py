"""Starting the HTTP API on a Ray cluster (what `wtb serve` does)."""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from wtb_ray.config import Settings


def replica_env(settings: Settings) -> dict[str, str]:
    """The settings replicas must see, whatever environment they start in: every one of
    them, as WTB_* variables. A token the user set travels too; a generated one stays in
    <home>/api_token (0600), which replicas on this machine read."""
    return {**{k: v for k, v in os.environ.items() if k.startswith("WTB_")},
            **settings.as_env()}


def deploy(settings: Settings, *, name: str = "wtb", route_prefix: str = "/") -> Any:
    """Run the API application on the connected cluster; returns its handle."""
    from serve.app import Ingress

    serve.start(http_options={"host": settings.api_host, "port": settings.api_port,
                              "request_timeout_s": settings.api_request_timeout_s})
    app = Ingress.options(
        max_ongoing_requests=settings.api_max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.api_num_cpus,
                           "runtime_env": {"env_vars": replica_env(settings)}},
    ).bind()
    return serve.run(app, name=name, route_prefix=route_prefix)
