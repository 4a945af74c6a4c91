from __future__ import annotations

import logging
import os
import shutil

import polars as pl
import pytest

from tests.lakes import eval_problems
from widen_dag.profiles import parse_profile
from widen_dag.storage.artifacts import bootstrap_dir, checkpoint_dir, write_manifest
from widen_dag.storage.lake import Lake
from widen_dag.workers.common import Worker
from widen_dag.workers.decode import decode_all


class _Pipes:
    log = logging.getLogger("test")


@pytest.mark.slow
def test_decode_worker_writes_mcts_and_sampled_rows_per_problem_for_each_named_checkpoint(tiny_checkpoint, tmp_path):
    """The worker end to end on the (untrained) tiny checkpoint, transformers backend, 3 problems."""
    lake = Lake(str(tmp_path / "lake"))
    profile = parse_profile(
        {
            "name": "t",
            "datasets": [{"name": "arith", "domain": "arithmetic", "source": {"kind": "arithmetic"}}],
            "generation": {"backend": "transformers", "device": "cpu", "max_tokens_per_node": 12},
            "search": {"max_depth": 6, "max_path_tokens": 120},
            "train": {"dpo": {"variants": {"joint_masked": {"balanced": True}}}},
            "eval": {
                "backend": "transformers",
                "max_new_tokens": 24,
                "mcts_decode": {"variants": ["sft", "joint_masked"], "rollouts": 2, "test_at": [1, 2], "max_problems": 3},
            },
        },
        "t.yaml",
    )
    shutil.copytree(tiny_checkpoint, bootstrap_dir(lake, "student"))
    for name in ("distill", "sft", "dpo-joint_masked"):
        shutil.copytree(tiny_checkpoint, checkpoint_dir(lake, name))
        write_manifest(checkpoint_dir(lake, name), {"name": name})
    lake.write_table("stg_problems", eval_problems(4))
    worker = Worker(_Pipes(), profile, lake)  # type: ignore[arg-type]

    out = decode_all(worker)
    rows = lake.read_table("mcts_decode")
    assert rows.height == 2 * 2 * 3  # 2 checkpoints x (mcts, sampled) x 3 problems (max_problems)
    assert set(rows["method"]) == {"mcts", "sampled"}
    assert rows.filter(pl.col("method") == "sampled")["attempts"].to_list() == [2] * 6
    mcts = rows.filter(pl.col("method") == "mcts")
    assert all(1 <= a <= 2 for a in mcts["attempts"]) and mcts["nodes"].min() > 1
    table7 = out["metadata"]["table7"]["raw_value"]
    assert "| SFT + MCTS decode |" in table7 and "| +mask |" in table7
    assert out["metadata"]["reused_trees"] == 0
    # one process per core, at most one per checkpoint: the side-by-side path on a 2-core machine
    assert out["metadata"]["decode_processes"] == min(2, len(os.sched_getaffinity(0)))
    assert decode_all(worker)["metadata"]["reused_trees"] == 6  # the rerun searches nothing again
