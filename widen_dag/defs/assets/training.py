"""Training: SFT on the length-balanced set, then the DPO ablation rows, as checkpoint assets."""

import sys

import dagster as dg
from widen_dag.defs.resources import PipelineResource
from widen_dag.profiles import load_profile

def train_command(pipeline: PipelineResource, *args: str) -> list[str]:
    """The worker command; under `accelerate launch` when the profile trains on several GPUs."""
    n = pipeline.load_profile().train.num_processes
    worker = ["-m", "widen_dag.workers.train", *args]
    if n > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), *worker]
    return [sys.executable, *worker]


# The rows of the paper's ablation; a variant is configuration only (profile train.dpo.variants).
dpo_variants = dg.StaticPartitionsDefinition(list(load_profile().train.dpo.variants))


@dg.asset(
    group_name="training",
    kinds={"pytorch", "safetensors"},
    code_version="sft_checkpoint-v1",
    pool="gpu",
    deps=["sft_dataset", "student_base"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
)
def sft_checkpoint(context: dg.AssetExecutionContext, pipeline: PipelineResource,
                   pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The student after SFT (TRL SFTTrainer, loss on the assistant response only) on the
    longest correct path of each problem. An HF checkpoint (safetensors) in the lake with a
    manifest of the data versions it was trained on; metadata: loss curve, tokens/s, config."""
    return pipes_subprocess_client.run(
        command=train_command(pipeline, "sft"), context=context, extras=pipeline.worker_extras(),
    ).get_materialize_result()


@dg.asset(
    group_name="training",
    kinds={"pytorch", "safetensors"},
    code_version="dpo_checkpoint-v1",
    pool="gpu",
    partitions_def=dpo_variants,
    deps=["sft_checkpoint", "preference_pairs"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
)
def dpo_checkpoint(context: dg.AssetExecutionContext, pipeline: PipelineResource,
                   pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """One row of the paper's ablation per partition, each from the SFT checkpoint with the
    SFT model as reference: `dpo` (sigmoid DPO, default pairs), `balanced` (+ shortest-correct
    chosen), `cdpo` (+ label smoothing), `joint` (+ alpha x SFT term), `joint_masked` (+ the
    shared-prefix mask on both terms)."""
    return pipes_subprocess_client.run(
        command=train_command(pipeline, "dpo", context.partition_key),
        context=context, extras=pipeline.worker_extras(),
    ).get_materialize_result()
