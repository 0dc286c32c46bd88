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


def test_wtb_serve_on_loopback_generates_a_private_token_and_serves(tmp_path):
    port = free_port()
    env = subprocess_env(f"sqlite:///{tmp_path / 'wtb.db'}", WTB_HOME=str(tmp_path),
                         WTB_ORCHESTRATOR_NAME="wtb-orchestrator-serve-cli")
    env.pop("WTB_API_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    # Started as `wtb serve &` from a script starts it: SIGINT ignored (no job control).
    server = subprocess.Popen(wtb_cmd("serve", "--port", str(port)), env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
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
        assert [w["name"] for w in listed.json()["workflows"]] == ["astro-qa"]
    finally:
        server.send_signal(signal.SIGTERM)  # `kill`: Serve shut down, Ray stopped, exit 0
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        with contextlib.suppress(ProcessLookupError):  # nothing of its Ray may outlive it
            os.killpg(server.pid, signal.SIGKILL)
    assert server.returncode == 0, server.stderr.read()[-2000:]
    assert "WTB API stopped" in server.stderr.read()
