"""Data-parallel generation: one engine per replica process, each on its own GPUs."""

from __future__ import annotations

import pytest

from widen_dag.domains.base import Problem
from widen_dag.evaluate import sample_and_score
from widen_dag.llm import GenerationConfigError, create_backend
from widen_dag.llm.replicas import DataParallelBackend, replica_gpus


def test_each_replica_gets_its_own_tensor_parallel_slice_of_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert [replica_gpus(i, 2) for i in range(2)] == ["4,5", "6,7"]
    with pytest.raises(GenerationConfigError, match="replica 2 needs GPUs 4..5, only 4 visible"):
        replica_gpus(2, 2)


@pytest.mark.slow
def test_two_replica_processes_answer_greedy_requests_like_one_engine(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # CPU here: the variable only shows each replica's slice
    problems = [Problem(f"p{i}", "arithmetic", f"{i} + 4", str(i + 4)) for i in range(5)]
    args = dict(device="cpu", seed=0)
    single = create_backend("transformers", str(tiny_checkpoint), **args)
    try:
        expected = sample_and_score(single, problems, n=1, temperature=0.0, top_p=1.0, max_tokens=12, seed=3)
    finally:
        single.close()
    dp = DataParallelBackend("transformers", str(tiny_checkpoint), replicas=2, **args)
    try:
        assert sorted(p["CUDA_VISIBLE_DEVICES"] for p in dp.placement) == ["0", "1"]
        assert len({p["pid"] for p in dp.placement}) == 2
        got = sample_and_score(dp, problems, n=1, temperature=0.0, top_p=1.0, max_tokens=12, seed=3)
        assert dp.stats.requests == len(problems) and dp.stats.calls == 2  # one call per replica
    finally:
        dp.close()
    assert [(r["problem_id"], r["sample"], r["response"]) for r in got] == [
        (r["problem_id"], r["sample"], r["response"]) for r in expected
    ]
