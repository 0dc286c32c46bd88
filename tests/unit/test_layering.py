"""The core library never imports Ray: it runs, and is tested, without a cluster."""

import subprocess
import sys

CORE = ["wtb_ray", "wtb_ray.engine.bench", "wtb_ray.engine.group", "wtb_ray.batch.service",
        "wtb_ray.batch.local", "wtb_ray.storage.store", "wtb_ray.cli.common",
        "wtb_ray.outbox.relay", "wtb_ray.outbox.feed", "wtb_ray.integrity.checker",
        "wtb_ray.cli.outbox", "wtb_ray.cli.integrity"]


def test_importing_the_core_does_not_import_ray():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
