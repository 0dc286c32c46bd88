"""The HTTP API for real: Ray Serve on the session's local Ray instance, one application per
backend (SQLite, PostgreSQL through PgBouncer), reached over HTTP with httpx."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
import ray
from ray import serve

from tests.conftest import free_port
from wtb_ray.config import Settings

TOKEN = "test-token-" + uuid.uuid4().hex


@dataclass
class Api:
    url: str
    settings: Settings
    client: httpx.Client  # carries the token
    anonymous: httpx.Client

    def wait_for(self, path: str, done, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while True:
            body = self.client.get(path).json()
            if done(body) or time.time() > deadline:
                return body
            time.sleep(0.2)


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 30})
    yield port
    serve.shutdown()


@pytest.fixture(scope="session", params=("sqlite", "pgbouncer"))
def api(request, serve_port, tmp_path_factory):
    from serve.deploy import deploy

    backend = request.param
    home = tmp_path_factory.mktemp(f"wtb-home-{backend}")
    if backend == "sqlite":
        url = f"sqlite:///{home / 'wtb.db'}"
    else:
        url = request.getfixturevalue("pgbouncer").url(request.getfixturevalue("pg_database"))
    settings = Settings(
        home=home, database_url=url, api_token=TOKEN, api_port=serve_port, api_max_cases=50,
        api_max_body_bytes=200_000, api_max_cells=20, api_event_stream_s=0.3,
        executor_idle_seconds=0,
        orchestrator_name=f"wtb-orchestrator-{uuid.uuid4().hex[:8]}",
        workflows={"astro-qa": "wtb_ray.examples.rag:workflow",
                   "chain": "tests.workflows:chain", "failing": "tests.workflows:failing",
                   "files": "tests.side_effects:files"})
    name = f"wtb-{backend}-{uuid.uuid4().hex[:6]}"
    deploy(settings, name=name, route_prefix=f"/{name}")
    base = f"http://127.0.0.1:{serve_port}/{name}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=60) as client, httpx.Client(base_url=base, timeout=60) as anon:
        yield Api(base, settings, client, anon)
    serve.delete(name)
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(settings.orchestrator_name, namespace="wtb"))

