"""The operations files keep the promises the docs make about them."""

import yaml

from tests.conftest import ROOT


def test_example_ray_cluster_keeps_token_auth_and_a_local_dashboard():
    spec = yaml.safe_load((ROOT / "cluster/ray-cluster.yaml").read_text())
    starts = spec["head_start_ray_commands"] + spec["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in " ".join(spec["head_start_ray_commands"])
    assert any(k.endswith(".ray/auth_token") for k in spec["file_mounts"])
    assert any("pip install" in c for c in spec["setup_commands"])


def test_local_up_starts_ray_with_token_auth_and_a_loopback_dashboard():
    script = (ROOT / "cluster/local-up.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in script
    assert "--dashboard-host=127.0.0.1" in script
