"""`ray job submit` and `wtb batch submit` against a real `ray start --head` cluster, started
and stopped by cluster/local-up.sh and cluster/local-down.sh (token authentication on)."""

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    rundir = tmp_path_factory.mktemp("ray-head")
    env = {**os.environ, "WTB_RAY_RUN_DIR": str(rundir),
           "WTB_RAY_DASHBOARD_PORT": str(free_port()), "WTB_RAY_NUM_CPUS": "2"}
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run(["bash", str(ROOT / "cluster/local-up.sh")], env=env, check=True,
                       capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        subprocess.run(["bash", str(ROOT / "cluster/local-down.sh")], env=env, timeout=60)
        raise
    exported = dict(line.removeprefix("export ").split("=", 1)
                    for line in (rundir / "env").read_text().splitlines())
    yield {**env, **exported}
    down = subprocess.run(["bash", str(ROOT / "cluster/local-down.sh")], env=env, timeout=60,
                          capture_output=True, text=True)
    assert not (rundir / "pgid").exists()
    # The head stopped on SIGTERM by itself, with the detached orchestrator and executors
    # the tests left on it (Ray's drain would have waited on their leases, then been killed).
    assert down.returncode == 0 and "did not stop" not in down.stderr, down.stderr


def test_ray_job_submit_runs_a_batch(head, tmp_path):
    db = f"sqlite:///{tmp_path / 'wtb.db'}"
    result = subprocess.run(
        ["ray", "job", "submit", "--address", head["WTB_RAY_DASHBOARD"], "--working-dir",
         str(ROOT),
         # Its executors kept warm would hold both CPUs from the next test's orchestrator
         # (another database, so another orchestrator) for a minute.
         "--runtime-env-json", json.dumps({"env_vars": {"WTB_EXECUTOR_IDLE_SECONDS": "0"}}),
         "--", "python", "-m", "cluster.jobs.run_batch",
         "tests/data/matrix_batch.yaml", "--db", db],
        env=head, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = json.loads(next(line for line in reversed(result.stdout.splitlines())
                            if line.startswith("{")))
    assert final["batch"]["status"] == "completed" and final["batch"]["completed"] == 30
    assert [r["pass_rate"] for r in final["leaderboard"]] == [1.0] * 6


def test_wtb_batch_submit_returns_at_once_and_the_cluster_finishes(head, tmp_path):
    db = f"sqlite:///{tmp_path / 'wtb.db'}"
    env = {**head, "PYTHONPATH": str(ROOT), "WTB_ORCHESTRATOR_NAME": "wtb-orchestrator-cli"}
    wtb = [sys.executable, "-m", "wtb_ray.cli", "batch"]
    submitted = subprocess.run([*wtb, "submit", "tests/data/matrix_batch.yaml", "--address",
                                head["RAY_ADDRESS"], "--db", db, "--json"],
                               env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    batch_id = json.loads(submitted.stdout)["batch_id"]
    deadline = time.time() + 300
    while True:
        status = json.loads(subprocess.run(
            [*wtb, "status", batch_id, "--db", db, "--json"], env=env, capture_output=True,
            text=True, check=True).stdout)
        if status["batch"]["status"] == "completed" or time.time() > deadline:
            break
        time.sleep(1)
    assert status["batch"]["completed"] == 30
    listed = json.loads(subprocess.run([*wtb, "list", "--db", db, "--json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    assert [b["id"] for b in listed["batches"]] == [batch_id]


def serve_config(tmp_path, port: int) -> tuple:
    """cluster/serve.yaml as shipped, pointed at a scratch database and a free port."""
    config = yaml.safe_load((ROOT / "cluster/serve.yaml").read_text())
    config["http_options"]["port"] = port
    token = "cluster-" + uuid.uuid4().hex
    config["applications"][0]["runtime_env"]["env_vars"].update(
        WTB_API_PORT=str(port), WTB_API_TOKEN=token, WTB_HOME=str(tmp_path),
        WTB_DATABASE_URL=f"sqlite:///{tmp_path / 'wtb.db'}",
        WTB_ORCHESTRATOR_NAME=f"wtb-orchestrator-{uuid.uuid4().hex[:8]}")
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, token


def answers(port: int, token: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while True:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            if health.status_code == 200:
                workflows = httpx.get(f"http://127.0.0.1:{port}/v1/workflows", timeout=10,
                                      headers={"Authorization": f"Bearer {token}"})
                assert httpx.get(f"http://127.0.0.1:{port}/v1/workflows").status_code == 401
                return workflows.json()
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "the Serve application never answered"
        time.sleep(1)


def test_serve_config_deploys_with_serve_deploy_and_runs_with_serve_run(head, tmp_path):
    port = free_port()
    config, token = serve_config(tmp_path, port)
    deployed = subprocess.run(["serve", "deploy", str(config), "-a", head["WTB_RAY_DASHBOARD"]],
                              env=head, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert [w["name"] for w in answers(port, token)["workflows"]] == ["astro-qa", "astro-report"]
    subprocess.run(["serve", "shutdown", "-a", head["WTB_RAY_DASHBOARD"], "-y"], env=head,
                   check=True, capture_output=True, timeout=120)

    # serve run: the same file, in the foreground, on the same cluster (RAY_ADDRESS).
    running = subprocess.Popen(["serve", "run", str(config)], env=head, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        listed = answers(port, token)["workflows"]
        assert [w["name"] for w in listed] == ["astro-qa", "astro-report"]
    finally:
        running.terminate()
        running.wait(timeout=60)
        subprocess.run(["serve", "shutdown", "-a", head["WTB_RAY_DASHBOARD"], "-y"], env=head,
                       capture_output=True, timeout=120)
