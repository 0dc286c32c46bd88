"""Ray fixtures: every test gets a database and an orchestrator of its own on the session's
local Ray instance (tests/conftest.py: ray_cluster)."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import pytest
import ray

from wtb_ray.batch.service import BatchService
from wtb_ray.config import Settings


@pytest.fixture
def ray_settings(ray_cluster, durable_url) -> Settings:
    """A database (SQLite, or PostgreSQL through PgBouncer) and an orchestrator of its own,
    killed afterwards with its executors (warm ones would hold the session's CPUs)."""
    settings = Settings(database_url=durable_url, executor_idle_seconds=0,
                        orchestrator_name=f"wtb-orchestrator-{uuid.uuid4().hex[:8]}")
    yield settings
    with contextlib.suppress(ValueError):  # ValueError: the test never created one
        ray.kill(ray.get_actor(settings.orchestrator_name, namespace="wtb"))


@pytest.fixture
def service(ray_settings, bench_factory) -> BatchService:
    return BatchService(bench_factory(ray_settings.url))


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
