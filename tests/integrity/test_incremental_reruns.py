"""#21 item 6: a rerun with nothing changed reuses what the lake holds; a change redoes its dependents."""

import shutil

import dagster as dg
import polars as pl

from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import run_or_reuse
from widen_dag.storage.lake import Lake
from widen_dag.workers.search import model_fingerprint


@dg.asset(code_version="probe-v1")
def probe(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """A worker-backed stage (the environment worker) behind the same reuse rule as the models,
    checkpoints and evaluation."""
    lake = pipeline.lake()
    return run_or_reuse(
        context,
        pipeline,
        pipes_subprocess_client,
        "environment",
        inputs={"stg_problems": lake.table_sha256("stg_problems")},
        config={"device": pipeline.load_profile().generation.device},
        artifact_present=True,
    )


def _materialize(tmp_path, instance):
    res = {
        "pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path / "lake")),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    result = dg.materialize([probe], resources=res, instance=instance)
    [mat] = result.asset_materializations_for_node("probe")
    launched = any("[pipes] external process successfully opened" in r.user_message for r in instance.all_logs(result.run_id))
    return mat, launched


def test_a_rerun_with_nothing_changed_reuses_and_a_changed_input_rebuilds_saying_why(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.write_table("stg_problems", pl.DataFrame({"problem_id": ["a"]}))
    instance = dg.DagsterInstance.ephemeral()
    first, launched = _materialize(tmp_path, instance)
    assert launched and first.metadata["reused"].value is False
    assert first.metadata["ran_because"].value == "never built against this lake"
    again, launched = _materialize(tmp_path, instance)
    assert not launched and again.metadata["reused"].value is True
    assert again.tags["dagster/data_version"] == first.tags["dagster/data_version"]  # downstream sees no change
    assert again.metadata["torch"].value == first.metadata["torch"].value  # the worker's metadata comes back too
    lake.write_table("stg_problems", pl.DataFrame({"problem_id": ["a", "b"]}))
    third, launched = _materialize(tmp_path, instance)
    assert launched and third.metadata["reused"].value is False
    assert third.metadata["ran_because"].value.startswith("input stg_problems changed")


def test_a_fresh_dagster_home_on_the_same_lake_still_reuses(tmp_path):
    _materialize(tmp_path, dg.DagsterInstance.ephemeral())
    mat, launched = _materialize(tmp_path, dg.DagsterInstance.ephemeral())
    assert not launched and mat.metadata["reused"].value is True


def test_tree_resume_key_follows_the_policy_content_not_its_file_times(tiny_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(
        tiny_checkpoint, copy, copy_function=shutil.copyfile
    )  # new mtimes, same bytes: every finished tree stays reusable
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_checkpoint))
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # other weights: no tree may be reused
    assert model_fingerprint(str(copy)) != model_fingerprint(str(tiny_checkpoint))
