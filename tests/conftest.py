from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("WIDEN_DAG_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not (DATASETS / "gsm8k" / "test.jsonl").is_file():
        pytest.fail(f"benchmark data not found at {DATASETS}: set WIDEN_DAG_DATASETS to the shared datasets folder")
    return DATASETS


@pytest.fixture()
def lake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "lake"
    monkeypatch.setenv("WIDEN_DAG_LAKE", str(root))
    return root
