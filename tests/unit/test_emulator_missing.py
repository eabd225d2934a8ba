"""Without the emulator distribution, `tablesync local` and `tablesync demo` say how to install it (exit 2).

Each case runs the real CLI in a fresh interpreter whose import system cannot see the emulator (or one of
its dependencies), as on a machine where only the product wheel is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HIDING_CLI = """
import importlib.abc, sys
HIDDEN = set(sys.argv[1].split(","))

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
from kcl_app.cli import main
sys.exit(main(sys.argv[2:]))
"""


def tablesync_without(hidden: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HIDING_CLI, hidden, *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


CASES = [
    *[("tablesync_local", "tablesync_local", argv)
      for argv in (("local", "up", "--port", "1"), ("local", "info"), ("local", "down"), ("demo",))],
    ("moto", "moto", ("local", "up")),
    ("tablesync_local,hypercorn", "tablesync_local, hypercorn", ("demo",)),
]


@pytest.mark.parametrize(("hidden", "missing", "argv"), CASES)
def test_emulator_commands_exit_2_with_install_instructions(tmp_path: Path, hidden: str, missing: str,
                                                            argv: tuple[str, ...]) -> None:
    extra = ("--state-dir", str(tmp_path)) if argv[0] == "local" else ()
    done = tablesync_without(hidden, *argv, *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"tablesync {argv[0]}: the local emulator is not installed (missing: {missing}); install it with "
        "'make setup' in a tablesync source checkout, or 'pip install ./tablesync_local' from one"]
    assert list(tmp_path.iterdir()) == []  # nothing started, no state or work directory written


def test_help_of_emulator_commands_works_without_the_emulator(tmp_path: Path) -> None:
    for command in ("local", "demo"):
        done = tablesync_without("tablesync_local,moto", command, "--help", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"`tablesync {command}" in done.stdout


def test_other_commands_do_not_need_the_emulator(tmp_path: Path) -> None:
    done = tablesync_without("tablesync_local,moto,hypercorn,h2", "run", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
