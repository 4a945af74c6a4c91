"""`widen-dag demo --profile tiny_instruct`: the real-model code path end to end on CPU, with
instruct-shaped stand-ins, a critic engine of its own, and a math, a Blocksworld and an
instruction-following column."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.conftest import run_demo
from widen_dag.storage.lake import Lake

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_tiny_instruct_demo_runs_end_to_end_with_math_blocksworld_and_instruction_following_columns(tmp_path):
    _, env, res = run_demo(REPO / "tests" / "profiles" / "tiny_instruct_ci.yaml", tmp_path, timeout=1100)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "demo: SUCCESS" in res.stdout and "| +mask |" in res.stdout
    # One section per eval set (the report lists each set with its own intervals): math,
    # planning and instruction following (IFEval's loose prompt-level accuracy).
    table = res.stdout[res.stdout.index("Ablation (the paper's Table 5 layout)") :]
    assert "**gsm8k_test**" in table and "**blocksworld**" in table and "**ifeval_test**" in table
    lake = Lake(str(tmp_path / "lake"))
    report = lake.read_table("ablation_report")
    assert set(report["eval_set"]) == {"gsm8k_test", "blocksworld", "ifeval_test"}
    nodes = lake.read_all("search_trees")
    # The stand-ins were never trained on the node format: the search got thoughts out of them
    # by template, prefills and stop strings, the critic wrote its node types, no textual twins.
    assert set(nodes.filter(pl.col("node_type") == "double_check")["model"]) == {"critic"}
    assert set(nodes.filter(pl.col("node_type") == "thinking")["model"]) == {"policy"}
    generated = nodes.filter(~pl.col("node_type").is_in(["root", "reflection"]))
    assert set(generated["ended_by"]) <= {"tag", "stop_string", "eos", "foreign_tag", "length"}
    assert generated.group_by("parent_id", "text").len()["len"].max() == 1
    searched = set(nodes.join(lake.read_table("stg_problems"), on="problem_id")["domain"])
    assert searched == {"math", "blocksworld", "instruction_following"}
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        search = instance.get_latest_materialization_event(dg.AssetKey("search_trees")).asset_materialization
        policy = instance.get_latest_materialization_event(dg.AssetKey("policy_model")).asset_materialization
    meta = search.metadata
    shares = [meta[k].value for k in ("tag_closed_share", "eos_ended_share", "foreign_tag_share", "cut_off_share")]
    assert abs(sum(shares) - 1.0) < 1e-3
    assert set(meta["no_answer_rate_by_node_type"].value) >= {"sub_task", "thinking", "answer"}
    assert meta["critic_engine"].value["requests"] > 0
    assert policy.metadata["chat_template"].value.startswith("chatml") and "critic_path" in policy.metadata
