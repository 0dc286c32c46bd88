"""Schemathesis against the live /openapi.json of each deployment: generated requests,
valid and not, to every route, with the token; none may get a 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.serve.conftest import TOKEN


def test_schemathesis_finds_no_server_error(api, tmp_path):
    # The coverage phase (every boundary value of every parameter: 20 s of ~1,000 requests)
    # runs against PostgreSQL, the stricter of the two (it refuses a NUL in a text, which
    # SQLite stores); random and stateful requests run against both.
    postgres = api.settings.url.startswith("postgresql")
    phases = "examples,coverage,fuzzing,stateful" if postgres else "fuzzing,stateful"
    command = [shutil.which("st") or "st", "run", f"{api.url}/openapi.json", "--url", api.url,
               "-H", f"Authorization: Bearer {TOKEN}", "--checks", "not_a_server_error",
               "--max-examples", "10", "--request-timeout", "60", "--no-color",
               "--phases", phases]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", result.stdout).groups())
    tested = int(re.search(r"Tested: (\d+)", result.stdout).group(1))
    assert selected == total == tested == 22, report  # every route, /healthz included
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed",
                                          result.stdout).groups())
    assert generated == passed > 20 * 10, report
