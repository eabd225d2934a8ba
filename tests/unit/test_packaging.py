"""The product wheel carries the product only; the emulator is its own distribution.

Both wheels are built from a copy of the sources (so the checkout gets no build/ directory), offline:
``pip wheel --no-deps --no-build-isolation`` with the setuptools of the test environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")


def _wheel(source: Path, out: Path) -> list[str]:
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name)
    for package in ("kcl_app", "tablesync_local"):
        shutil.copytree(REPO / package, root / package, ignore=_IGNORE)
    return root


def test_product_wheel_contains_no_emulator_module(sources: Path, tmp_path: Path) -> None:
    names = _wheel(sources, tmp_path / "dist")
    modules = [n for n in names if n.endswith(".py")]
    assert "kcl_app/cli.py" in modules and "kcl_app/core/attrs.py" in modules
    assert [n for n in names if n.startswith("tablesync_local/")] == []
    # nothing of the emulator under another name either: no moto fixes, no server, no destination emulation
    assert [n for n in modules if "moto" in n or n.startswith("kcl_app/local/")] == []
    top_levels = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top_levels == {"kcl_app"}
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))) as zf:
        requires = [line for line in zf.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "moto" in r and "extra" not in r], requires


def test_emulator_wheel_is_the_emulator_alone(sources: Path, tmp_path: Path) -> None:
    names = _wheel(sources / "tablesync_local", tmp_path / "dist")
    modules = {n for n in names if n.endswith(".py")}
    assert {"tablesync_local/__init__.py", "tablesync_local/server.py", "tablesync_local/items.py",
            "tablesync_local/moto_fixes/dynamodb.py"} <= modules
    assert {n.split("/", 1)[0] for n in modules} == {"tablesync_local"}


def test_emulator_imports_no_product_code() -> None:
    """The oracle shares no domain code with the product (its contract): not one ``kcl_app`` import."""
    offenders = []
    for path in sorted((REPO / "tablesync_local").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("import kcl_app", "from kcl_app")):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {stripped}")
    assert offenders == []
