"""`tablesync demo` end to end, as a user runs it: one command, one verdict line, exit status 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.daemon]


def test_demo_replicates_verifies_and_tears_down(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kcl_app.cli", "demo", "--seconds", "6", "--rate", "25"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdict = proc.stdout.strip().splitlines()
    assert len(verdict) == 1 and verdict[0].startswith("OK: 2 targets equal the source, verified item by item")
    assert "leases taken" in proc.stderr and "applied: dr=" in proc.stderr
    workdir = proc.stderr.split("work directory ", 1)[1].split()[0]
    assert not os.path.exists(workdir), "a successful demo leaves nothing behind"
