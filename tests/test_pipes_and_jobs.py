from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from widen_dag.cli import _pool_limit
from widen_dag.defs.assets.environment import compute_environment
from widen_dag.defs.assets.problems import raw_problems, stg_problems
from widen_dag.defs.partitions import register_profile_shards
from widen_dag.defs.resources import PipelineResource
from widen_dag.evaluate import report as ablation
from widen_dag.launch.gpus import node_gpu_ids
from widen_dag.profiles import load_profile, profile_from_json
from widen_dag.storage.lake import Lake

REPO = Path(__file__).resolve().parents[1]
CI_PROFILE = REPO / "tests" / "profiles" / "tiny_ci.yaml"


def _resources(lake_root: Path) -> dict:
    return {
        "pipeline": PipelineResource(profile="tiny", lake_root=str(lake_root)),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def test_pipes_worker_round_trip_reports_metadata_and_logs(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([compute_environment], resources=_resources(tmp_path), instance=instance)
    assert result.success
    mat = result.asset_materializations_for_node("compute_environment")[0]
    assert mat.metadata["device"].value == "cpu"
    assert mat.metadata["torch"].value.startswith("2.")
    assert mat.metadata["matmul_gflops"].value > 0
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(m.startswith("compute environment: {") for m in messages)  # the worker's log, relayed


def test_a_yaml_profile_named_in_the_environment_reaches_the_worker(tmp_path, monkeypatch):
    # A user's own profile file, given as a relative path through $WIDEN_DAG_PROFILE: the worker
    # must load that file, not look for a built-in profile called by its name.
    (tmp_path / "mine.yaml").write_text("extends: tiny\nname: my-own-profile\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WIDEN_DAG_PROFILE", "mine.yaml")
    pipeline = PipelineResource(lake_root=str(tmp_path / "lake"))
    extras = pipeline.worker_extras(pipeline.load_profile())
    assert profile_from_json(extras["profile_json"]).name == "my-own-profile"
    result = dg.materialize(
        [compute_environment],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"pipeline": pipeline, "pipes_subprocess_client": dg.PipesSubprocessClient()},
    )
    assert result.success


def test_run_seed_is_run_config_that_reseeds_search_training_and_evaluation_only():
    from widen_dag.definitions import defs

    config = {"resources": {"pipeline": {"config": {"seed": 3}}}}
    for job in ("demo", "dpo_variants", "evaluation"):
        assert dg.validate_run_config(defs.resolve_job_def(job), config)["resources"]["pipeline"]["config"]["seed"] == 3
    pipeline = PipelineResource(profile="tiny", lake_root="/tmp/lake", seed=3)
    base, seeded = load_profile("tiny"), pipeline.load_profile()
    assert (seeded.search.seed, seeded.train.seed, seeded.eval.seed, seeded.data.distill.seed) == (3, 3, 3, 3)
    # the same problems, split and base models in every seed: the comparisons stay paired
    assert (seeded.seed, seeded.problems, seeded.datasets, seeded.models) == (
        base.seed,
        base.problems,
        base.datasets,
        base.models,
    )
    # the worker gets the seeded profile itself
    assert profile_from_json(pipeline.worker_extras(pipeline.load_profile())["profile_json"]) == seeded
    plain = PipelineResource(profile="tiny")
    assert profile_from_json(plain.worker_extras(plain.load_profile())["profile_json"]) == base  # no seed: the profile's own


def test_problem_assets_write_the_lake_and_report_counts(tmp_path):
    res = _resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    shards = ["arithmetic-000", "arithmetic-001", "instructions-000"]
    assert register_profile_shards(instance, load_profile("tiny")) == shards
    for key in shards:
        assert dg.materialize([raw_problems], partition_key=key, resources=res, instance=instance).success
    result = dg.materialize(
        [raw_problems.to_source_asset(), stg_problems], resources=res, selection=[stg_problems], instance=instance
    )
    assert result.success
    lake = Lake(str(tmp_path))
    staged = lake.read_table("stg_problems")
    assert staged.height == 1640 + 320 and staged["problem_id"].n_unique() == staged.height
    assert staged.group_by("domain").len().sort("domain").rows() == [("arithmetic", 1640), ("instruction_following", 320)]
    mats = {e.materialization.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    assert mats["stg_problems"].metadata["dagster/row_count"].value == staged.height
    assert mats["problem_quarantine"].metadata["dagster/row_count"].value == 0
    assert str(mats["stg_problems"].metadata["path"].value).endswith("stg_problems/__all__.parquet")


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_demo_command_runs_every_shard_into_a_persistent_dagster_home(tiny_ci_demo):
    # The tiny demo at test size (tests/profiles/tiny_ci.yaml; conftest runs it once, the browser
    # test reuses it): the same jobs, shards, variants and code path as `make demo`, whose own
    # table and timings the README reports.
    tmp_path, env, res = tiny_ci_demo
    cli = Path(sys.executable).parent / "widen-dag"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "demo: SUCCESS" in res.stdout
    assert (tmp_path / "home" / "dagster.yaml").is_file()
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        runs = instance.get_runs()
        variants = list(load_profile(str(CI_PROFILE)).train.dpo.variants)
        assert sorted(r.job_name for r in runs) == sorted(["demo", "evaluation"] + ["dpo_variants"] * len(variants))
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert sorted(r.tags.get("dagster/partition") for r in runs if r.job_name == "dpo_variants") == sorted(variants)
    lake = Lake(str(tmp_path / "lake"))
    shards = ["arithmetic-000", "arithmetic-001", "instructions-000"]
    assert lake.partitions("raw_problems") == shards
    assert lake.partitions("search_trees") == shards
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        policy = instance.get_latest_materialization_event(dg.AssetKey("policy_model")).asset_materialization
        student = instance.get_latest_materialization_event(dg.AssetKey("student_base")).asset_materialization
        search = instance.get_latest_materialization_event(dg.AssetKey("search_trees")).asset_materialization
        demo_run = next(r for r in runs if r.job_name == "demo")
        slots = _pool_limit(instance)
        steps = {
            (e.dagster_event.event_type_value, e.dagster_event.step_key): e.timestamp
            for e in instance.all_logs(demo_run.run_id)
            if e.dagster_event is not None and e.dagster_event.step_key in ("policy_model", "student_base")
        }
        sft = instance.get_latest_materialization_event(dg.AssetKey("sft_checkpoint")).asset_materialization
        # (a later run may re-materialize a DPO partition as reused: the trained ones carry the curves)
        dpo = [r.asset_materialization for r in instance.fetch_materializations(dg.AssetKey("dpo_checkpoint"), limit=50).records]
    assert sft.metadata["tensorboard_dir"].value.endswith("checkpoints/sft/tensorboard")
    # (seen once: a worker's Pipes "closed" message lost, its metadata with it; see the session note)
    curves = [m.metadata["reward_curves"].value for m in dpo if "reward_curves" in m.metadata]
    assert curves and all(c.startswith("![DPO (") for c in curves)  # the reward curves drawn
    # One tokenizer, trained by each model's worker from the same texts; so the student needs
    # nothing from the policy, and on a CPU machine with two pool slots trains beside it.
    assert policy.metadata["tokenizer_sha256"].value == student.metadata["tokenizer_sha256"].value
    if slots >= 2 and not node_gpu_ids():
        assert steps[("STEP_START", "student_base")] < steps[("STEP_SUCCESS", "policy_model")]
        # They shared the cores while both trained (a whole-node lease would keep each at all
        # of them), and the policy had them all once alone.
        cores = len(os.sched_getaffinity(0))
        assert student.metadata["torch_threads"].value.startswith(str(cores // 2))
        assert policy.metadata["torch_threads"].value.endswith(str(cores))
    # The tiny policy's targets: search matters (20-70% single-sample) and the format holds.
    assert 0.2 <= policy.metadata["heldout_accuracy"].value <= 0.7
    assert policy.metadata["well_formed_rate"].value >= 0.95
    assert search.metadata["trees"].value > 0 and search.metadata["solved_trees"].value > 0
    nodes = lake.read_all("search_trees")
    assert nodes["node_id"].n_unique() == nodes.height
    staged = lake.read_table("stg_problems")
    assert set(nodes.join(staged, on="problem_id")["domain"]) == {"arithmetic", "instruction_following"}
    searched = set(nodes["problem_id"])
    assert searched <= set(staged.filter(staged["split"] == "train")["problem_id"])  # eval problems never searched
    for name in ("tree_paths", "sft_dataset", "preference_pairs", "length_profile"):
        assert lake.read_table(name).height > 0, name
    _check_checkpoints(tmp_path / "lake" / "checkpoints")
    report = lake.read_table("ablation_report")
    assert set(report.columns) >= {
        "variant",
        "eval_set",
        "n",
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
        "no_answer_rate",
        "no_answer_lo",
        "no_answer_hi",
        "greedy_accuracy",
        "test_at_2",
        "mean_tokens",
        "median_tokens",
        "acc_diff_vs_prev_lo",
        "acc_diff_vs_sft_hi",
    }
    for eval_set in ("arithmetic", "instructions"):
        rows = report.filter(pl.col("eval_set") == eval_set)
        assert sorted(rows["variant"]) == sorted(["base", "distill_baseline", "sft", *variants]), eval_set
    # eval.max_problems of the test profile (the IF set has fewer eval problems), every row of a
    # set on the same problems
    n_by_set = dict(report.group_by("eval_set").agg(pl.col("n").unique()).rows())
    assert n_by_set["arithmetic"] == [60] and len(n_by_set["instructions"]) == 1 and 30 <= n_by_set["instructions"][0] < 60
    assert ((report["accuracy_lo"] <= report["accuracy"]) & (report["accuracy"] <= report["accuracy_hi"])).all()
    # Every paper direction is judged from paired intervals. Which verdicts hold is a measured
    # result of `make demo` on the full tiny profile (README) and of bench/ablation_seeds.py across
    # seeds: at this test size SFT's gain over the base is within noise.
    verdicts = {(d["variant"], d["metric"]): d for d in ablation.direction_table(report)}
    assert {("sft", "acc"), ("dpo", "no_answer"), ("joint_masked", "acc")} <= set(verdicts)
    assert {d["verdict"] for d in verdicts.values()} <= {"supported", "within noise", "contradicted"}
    assert "Ablation (the paper's Table 5 layout)" in res.stdout and "| +mask |" in res.stdout
    # Lineage from a trained checkpoint back to its pairs, tree nodes and problem.
    traced = subprocess.run(
        [str(cli), "trace", "dpo-joint_masked", "--json"], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    pair = json.loads(traced.stdout)["pairs"][0]
    detail = subprocess.run(
        [str(cli), "trace", "dpo-joint_masked", "--pair", pair["problem_id"], "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=True,
    )
    nodes = json.loads(detail.stdout)
    assert nodes["chosen"][-1]["reward"] == 1.0 and nodes["rejected"][-1]["reward"] in (0.0, None)
    assert nodes["problem"]["split"] == "train"


def _check_checkpoints(folder: Path) -> None:
    """SFT and every DPO variant saved with a manifest; each reloads and generates. (That trained
    checkpoints load in vLLM is test_lora's: its merged SFT and DPO checkpoints are saved alike.)"""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = ["distill", "sft"] + [f"dpo-{v}" for v in load_profile(str(CI_PROFILE)).train.dpo.variants]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # nothing half-saved lies beside them
    for name in names:
        manifest = json.loads((folder / name / "widen_dag_checkpoint.json").read_text())
        assert manifest["inputs"] and manifest["rows"] > 0
        tok = AutoTokenizer.from_pretrained(folder / name)
        model = AutoModelForCausalLM.from_pretrained(folder / name, use_safetensors=True)
        ids = tok(
            tok.apply_chat_template([{"role": "user", "content": "Ann has 2 pens."}], add_generation_prompt=True, tokenize=False),
            return_tensors="pt",
            add_special_tokens=False,
        )
        assert (
            model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id).shape[1]
            > ids["input_ids"].shape[1]
        )
        # train.report_to's default: the run's TensorBoard curves saved beside its weights.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(folder / name / "tensorboard"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert "train/loss" in tags and events.Scalars("train/loss"), name
        if name.startswith("dpo-"):
            assert {"train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins"} <= tags, name


def test_cli_rejects_a_bad_profile_with_one_message(tmp_path):
    cli = Path(sys.executable).parent / "widen-dag"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    res = subprocess.run([str(cli), "demo", "--profile", "tinny"], capture_output=True, text=True, cwd=REPO, env=env)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("widen-dag: no profile 'tinny'")
    assert "Traceback" not in res.stderr
