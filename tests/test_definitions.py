from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from widen_dag.definitions import defs

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
HEAVY = ("torch", "transformers", "vllm", "trl")


def asset_graph_snapshot() -> dict:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        out[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitioned": node.partitions_def is not None,
            "has_code_version": node.code_version is not None,
            "has_description": bool(node.description),
        }
    return out


def test_definitions_are_loadable():
    dg.Definitions.validate_loadable(defs)


def test_asset_graph_matches_snapshot():
    current = asset_graph_snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, "asset graph changed: if intended, rerun with UPDATE_SNAPSHOTS=1 and commit the snapshot"


def test_every_asset_has_docstring_group_kinds_and_code_version():
    for name, node in asset_graph_snapshot().items():
        assert node["has_description"] and node["has_code_version"] and node["kinds"] and node["group"] != "default", name


def test_code_location_imports_no_torch_transformers_or_vllm():
    code = f"import sys, widen_dag.definitions\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_dagster_cli_validates_the_workspace():
    dagster = Path(sys.executable).parent / "dagster"
    res = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"], capture_output=True, text=True, cwd=REPO
    )
    assert res.returncode == 0, res.stdout + res.stderr


def _worker_assets():
    """(key, node) of every asset whose work runs in a torch/vLLM worker."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if "pytorch" in node.kinds or "vllm" in node.kinds:
            yield key, node


def test_gpu_work_is_in_the_gpu_pool():
    workers = list(_worker_assets())
    assert workers
    for key, node in workers:
        assert node.pools == {"gpu"}, key


def test_a_runs_own_executor_holds_gpu_pool_steps_to_the_pool_limit():
    """Every pool-gpu step carries the tag the CLI's runs limit in their executor (a step queued
    behind another of its run then starts at once, not at Dagster's backed-off pool poll), and
    that executor config is valid for every job."""
    from dagster._core.system_config.objects import ResolvedRunConfig

    from widen_dag.defs.workers import GPU_POOL_TAG, pool_executor_config

    for key, _node in _worker_assets():
        assert defs.get_assets_def(key).op.tags.get(GPU_POOL_TAG) == "gpu", key
    for job in defs.resolve_all_job_defs():
        for limit, gpus in ((1, False), (2, False), (1, True), (2, True)):
            ResolvedRunConfig.build(job, pool_executor_config(limit, gpus))  # raises on config the executor refuses


def test_a_cpu_node_with_one_pool_slot_runs_steps_in_process_and_otherwise_in_forked_processes():
    """A CPU node with one slot: the steps would run one at a time anyway, so no process per
    step; a GPU node (one slot or more), or a CPU node whose workers share its cores: the
    multiprocess executor, holding worker-launching steps to the pool's limit while the others
    run beside them, its step processes forked from a server with the definitions imported."""
    from widen_dag.defs.workers import GPU_POOL_TAG, pool_executor_config

    in_process = {"execution": {"config": {"in_process": {}}}}
    assert pool_executor_config(1, node_has_gpus=False) == in_process
    assert pool_executor_config(2, node_has_gpus=False, side_by_side=False) == in_process
    for limit, gpus in ((1, True), (3, True), (2, False)):
        multiprocess = pool_executor_config(limit, node_has_gpus=gpus)["execution"]["config"]["multiprocess"]
        assert multiprocess["tag_concurrency_limits"] == [{"key": GPU_POOL_TAG, "value": "gpu", "limit": limit}]
        if gpus:  # a fresh interpreter per step (Dagster's default): nothing inherited from a server
            assert "start_method" not in multiprocess
        else:
            assert "widen_dag.definitions" in multiprocess["start_method"]["forkserver"]["preload_modules"]


def test_every_worker_asset_has_a_retry_policy():
    """A crashed or hung (timed-out) worker is retried by Dagster, never left silent."""
    workers = list(_worker_assets())
    assert workers
    for key, _ in workers:
        assert defs.get_assets_def(key).op.retry_policy is not None, key


def test_only_runs_with_two_independent_trainers_share_a_cpu_machine_between_steps():
    """The demo run trains the student (and the distillation baseline after it) beside the
    policy; a DPO variant's run, the evaluation run (whole-node workers one after another) and
    the smoke run have nothing to put side by side, so they keep the in-process executor."""
    from widen_dag.defs.workers import shares_cores, trainers_can_overlap

    def overlap(name: str) -> bool:
        job = defs.resolve_job_def(name)
        return trainers_can_overlap(job, list(job.asset_layer.executable_asset_keys))

    assert overlap("demo")
    for name in ("dpo_variants", "evaluation", "smoke"):
        assert not overlap(name), name
    sharing = {k.to_user_string() for k, _ in _worker_assets() if shares_cores(defs.get_assets_def(k))}
    # (compute_environment measures the machine: it takes it whole, like search and evaluation)
    assert sharing == {
        "policy_model",
        "student_base",
        "distill_checkpoint",
        "sft_checkpoint",
        "dpo_checkpoint",
    }
