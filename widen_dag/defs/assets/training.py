"""Training: SFT on the length-balanced set, then the DPO ablation rows, as checkpoint assets."""

import dagster as dg

from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import run_worker
from widen_dag.profiles import Profile


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
    return run_worker(context, pipeline, pipes_subprocess_client, "train", "sft")


def dpo_checkpoint_asset(profile: Profile) -> dg.AssetsDefinition:
    """The DPO asset, partitioned by the rows of the paper's ablation in the resolved profile
    (a variant is configuration only: profile train.dpo.variants)."""

    @dg.asset(
        group_name="training",
        kinds={"pytorch", "safetensors"},
        code_version="dpo_checkpoint-v1",
        pool="gpu",
        partitions_def=dg.StaticPartitionsDefinition(list(profile.train.dpo.variants)),
        deps=["sft_checkpoint", "preference_pairs"],
        retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
    )
    def dpo_checkpoint(context: dg.AssetExecutionContext, pipeline: PipelineResource,
                       pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        """One row of the paper's ablation per partition, each from the SFT checkpoint with the
        SFT model as reference: `dpo` (sigmoid DPO, default pairs), `balanced` (+ shortest-correct
        chosen), `cdpo` (+ label smoothing), `joint` (+ alpha x SFT term), `joint_masked` (+ the
        shared-prefix mask on both terms)."""
        return run_worker(context, pipeline, pipes_subprocess_client, "train", "dpo", context.partition_key)

    return dpo_checkpoint
