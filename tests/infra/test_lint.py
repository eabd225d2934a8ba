"""cfn-lint must be clean on every template (errors, warnings and informational findings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"
TEMPLATES = sorted(p.name for p in INFRA_DIR.glob("*.yaml"))
CFN_LINT = Path(sys.executable).parent / "cfn-lint"


def test_all_templates_are_linted() -> None:
    assert TEMPLATES == ["alarms.yaml", "dashboard.yaml", "stream.yaml", "target-account.yaml", "verifier.yaml",
                         "worker.yaml"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_cfn_lint_clean(template: str) -> None:
    result = subprocess.run(
        [str(CFN_LINT), "--format", "parseable", "--include-checks", "I", "--", str(INFRA_DIR / template)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"cfn-lint {template}:\n{result.stdout}{result.stderr}"
