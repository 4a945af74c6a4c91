"""The layering is enforced by tools, not by review: ruff and import-linter's contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_import_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "module, line",
    [
        ("widen_dag/domains/base.py", "import dagster"),
        ("widen_dag/search/tree.py", "from widen_dag.defs import resources"),
        ("widen_dag/workers/evaluate.py", "from widen_dag.workers import train"),
    ],
)
def test_a_library_or_worker_crossing_its_layer_breaks_a_contract(tmp_path, module, line):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "widen_dag", copy / "widen_dag", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    target = copy / module
    target.write_text(f"{line}  # noqa\n" + target.read_text())
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


def test_ruff_finds_nothing():
    ruff = BIN / "ruff"
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([str(ruff), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"ruff {' '.join(args)}:\n{result.stdout}{result.stderr}"
