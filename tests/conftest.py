from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("WIDEN_DAG_DATASETS", REPO.parent / "shared" / "datasets"))
TINY_CI_PROFILE = REPO / "tests" / "profiles" / "tiny_ci.yaml"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not (DATASETS / "gsm8k" / "test.jsonl").is_file():
        pytest.fail(f"benchmark data not found at {DATASETS}: set WIDEN_DAG_DATASETS to the shared datasets folder")
    return DATASETS


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny Llama with the bootstrap tokenizer and chat template, saved as an HF
    folder (safetensors): the one small model the unit tests load, train and generate with."""
    from widen_dag.domains import arithmetic
    from widen_dag.train import bootstrap

    out = tmp_path_factory.mktemp("tiny_checkpoint")
    rng = random.Random(0)
    problems = arithmetic.generate(300, 2, 9, seed=1)
    corpus = [arithmetic.task_prompt(p.question) + bootstrap.tagged_solution(p, rng, 0.3) for p in problems]
    tok = bootstrap.train_tokenizer(corpus, 400, out)
    model = bootstrap.new_model(tok, 64, 128, 2, 2, 512, seed=0)  # vLLM-CPU attention needs head_dim >= 32
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_vllm(tiny_checkpoint):
    """One vLLM engine on ``tiny_checkpoint`` for every test that needs one (test_llm's backend
    tests, the critic-routing test's policy): an engine start costs ~25 s on 2 cores."""
    from tests.engines import TINY_ENGINE
    from widen_dag.llm import create_backend

    engine = create_backend("vllm", str(tiny_checkpoint), **TINY_ENGINE)
    yield engine
    engine.close()


@pytest.fixture()
def lake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "lake"
    monkeypatch.setenv("WIDEN_DAG_LAKE", str(root))
    return root


class DemoRun(NamedTuple):
    root: Path  # holds home/ (DAGSTER_HOME) and lake/ (WIDEN_DAG_LAKE)
    env: dict[str, str]
    result: subprocess.CompletedProcess


def run_demo(profile: Path, root: Path, timeout: int, **extra_env: str) -> DemoRun:
    """`widen-dag demo --profile <profile>` in a Dagster home and lake of its own under ``root``
    (the environment's profile is not the one meant)."""
    env = {**os.environ, "DAGSTER_HOME": str(root / "home"), "WIDEN_DAG_LAKE": str(root / "lake"), **extra_env}
    env.pop("WIDEN_DAG_PROFILE", None)
    cli = Path(sys.executable).parent / "widen-dag"
    result = subprocess.run(
        [str(cli), "demo", "--profile", str(profile)], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )
    return DemoRun(root, env, result)


@pytest.fixture(scope="session")
def tiny_ci_demo(tmp_path_factory) -> DemoRun:
    """`widen-dag demo --profile tests/profiles/tiny_ci.yaml` run once per session (~6 minutes on
    2 cores): the demo test checks it, the browser test opens the UI on a copy of it."""
    return run_demo(TINY_CI_PROFILE, tmp_path_factory.mktemp("tiny_ci_demo"), timeout=1500)
