"""`wtb serve` as a user runs it: its own local Ray instance, a generated token on loopback,
and a refusal to listen off loopback without WTB_API_TOKEN."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time

import httpx

from tests.conftest import ROOT, free_port, subprocess_env, wtb_cmd


def test_wtb_serve_refuses_a_public_host_without_a_token(tmp_path):
    env = subprocess_env(f"sqlite:///{tmp_path / 'wtb.db'}", WTB_HOME=str(tmp_path))
    env.pop("WTB_API_TOKEN", None)
    result = subprocess.run(wtb_cmd("serve", "--host", "0.0.0.0"), env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "WTB_API_TOKEN" in result.stderr and "0.0.0.0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "api_token").exists()


def _start(tmp_path, port: int) -> subprocess.Popen:
    env = subprocess_env(f"sqlite:///{tmp_path / 'wtb.db'}", WTB_HOME=str(tmp_path),
                         WTB_ORCHESTRATOR_NAME="wtb-orchestrator-serve-cli")
    env.pop("WTB_API_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    # Started as `wtb serve &` from a script starts it: SIGINT ignored (no job control).
    return subprocess.Popen(wtb_cmd("serve", "--port", str(port)), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def _stop(server: subprocess.Popen) -> str:
    """`kill` it (Serve shut down, Ray stopped); returns what it printed. Called from a
    `finally`, it asserts nothing, so as not to hide what failed before it."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    with contextlib.suppress(ProcessLookupError):  # nothing of its Ray may outlive it
        os.killpg(server.pid, signal.SIGKILL)
    return server.stderr.read()


def test_wtb_serve_on_loopback_generates_a_private_token_and_serves(tmp_path):
    port = free_port()
    server = _start(tmp_path, port)
    try:
        deadline = time.time() + 240
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "wtb serve never answered /healthz"
            time.sleep(1)
        token_file = tmp_path / "api_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        url = f"http://127.0.0.1:{port}/v1/workflows"
        assert httpx.get(url, timeout=10).status_code == 401
        listed = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert [w["name"] for w in listed.json()["workflows"]] == ["astro-qa", "astro-report"]
    finally:
        printed = _stop(server)
    assert server.returncode == 0, printed[-2000:]
    assert "WTB API stopped" in printed


def test_wtb_serve_killed_while_it_deploys_stops_cleanly(tmp_path):
    # Serve has started; the replica (booting the orchestrator) takes seconds more. A service
    # manager stopping it now must get the same clean stop as later, not a killed process.
    server = _start(tmp_path, free_port())
    try:
        for line in server.stderr:
            if "Started Serve" in line:
                break
        else:
            raise AssertionError(f"wtb serve ended (exit {server.wait()}) before Serve started")
    finally:
        printed = _stop(server)
    assert server.returncode == 0, printed[-2000:]
    assert "WTB API stopped" in printed and "WTB API at" not in printed
