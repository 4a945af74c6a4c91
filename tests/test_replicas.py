"""Data-parallel generation: one engine per replica process, each on its own GPUs."""

from __future__ import annotations

import contextlib

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


# The parent of two vLLM replicas: prints its rows and every process it started, then waits to be killed.
_VLLM_REPLICAS_PARENT = """
import json, sys
import psutil
from tests.engines import TINY_ENGINE
from widen_dag.domains.base import Problem
from widen_dag.evaluate import sample_and_score
from widen_dag.llm.replicas import DataParallelBackend

if __name__ == "__main__":
    problems = [Problem(f"p{i}", "arithmetic", f"{i} + 4", str(i + 4)) for i in range(6)]
    dp = DataParallelBackend("vllm", sys.argv[1], replicas=2, pin_gpus=False, **TINY_ENGINE)
    rows = sample_and_score(dp, problems, n=2, temperature=1.0, top_p=1.0, max_tokens=12, seed=3)
    descendants = [p.pid for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"rows": [[r["problem_id"], r["sample"], r["response"]] for r in rows],
                      "replicas": [p["pid"] for p in dp.placement], "descendants": descendants}), flush=True)
    sys.stdin.read()  # until the test kills this process
"""


@pytest.mark.slow
def test_two_vllm_replicas_answer_seeded_requests_like_one_engine_and_die_with_their_parent(tiny_checkpoint, tiny_vllm, tmp_path):
    """vLLM starts its engine core as a child process: replicas must be allowed children (not
    daemonic), and everything they started must go when their parent is killed."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    script = tmp_path / "replicas_parent.py"
    script.write_text(_VLLM_REPLICAS_PARENT)
    repo = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tiny_checkpoint)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    descendants: list[psutil.Process] = []
    try:
        line = parent.stdout.readline()
        assert line, f"the replicas' parent exited with code {parent.wait()} before answering"
        report = json.loads(line)
        descendants = [psutil.Process(pid) for pid in report["descendants"]]
        replicas = set(report["replicas"])
        # each replica has its own engine core process below it
        assert replicas <= set(report["descendants"]) and len(report["descendants"]) >= 2 * len(replicas) == 4

        problems = [Problem(f"p{i}", "arithmetic", f"{i} + 4", str(i + 4)) for i in range(6)]
        expected = sample_and_score(tiny_vllm, problems, n=2, temperature=1.0, top_p=1.0, max_tokens=12, seed=3)
        assert report["rows"] == [[r["problem_id"], r["sample"], r["response"]] for r in expected]

        parent.send_signal(signal.SIGKILL)  # no close(), no atexit: only the replicas' watchdogs can clean up
        parent.wait()
        _, alive = psutil.wait_procs(descendants, timeout=120)
        assert alive == [], f"still running after their parent died: {[p.pid for p in alive]}"
    finally:
        parent.kill()
        for p in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
