"""The floors hold: import-linter's contracts in pyproject.toml (layers; no circle between packages), run on the
package as it is, and on a copy with one forbidden import added (the contracts must see it)."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import frs_cli

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=120)


def _layer_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (floors,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [name.strip() for layer in floors["layers"] for name in layer.replace("|", ":").split(":")]


def test_package_keeps_the_floors():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_every_module_sits_on_a_floor():
    """A new package or cache module cannot slip past the contract: each top-level part of frs_cli is a layer,
    and frs_cli.cache (whose writer sits with the jobs) is listed module by module."""
    listed = set(_layer_modules())
    top = {f"frs_cli.{m.name}" for m in pkgutil.iter_modules(frs_cli.__path__)} - {"frs_cli.__main__"}
    assert top - listed == {"frs_cli.cache"}
    cache = {f"frs_cli.cache.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "frs_cli" / "cache")])}
    assert cache <= listed
    assert "frs_cli.cache" not in listed


def test_contract_catches_data_importing_the_cache(tmp_path):
    """The old knot (data.coco importing cache.reader), put back in a copy of the package, breaks the contract."""
    shutil.copytree(ROOT / "frs_cli", tmp_path / "frs_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    coco = tmp_path / "frs_cli" / "data" / "coco.py"
    coco.write_text(coco.read_text() + "\nfrom frs_cli.cache.reader import TeacherCache  # noqa: E402\n")
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "0 kept, 2 broken" in result.stdout  # a floor broken, and a circle between data and cache
    assert "frs_cli.data.coco -> frs_cli.cache.reader" in result.stdout
    assert "- .data -> .cache (1 import)" in result.stdout
