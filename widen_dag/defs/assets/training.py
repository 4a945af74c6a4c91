"""Training: SFT on the length-balanced set, then the DPO ablation rows, as checkpoint assets."""

import dagster as dg

from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import SHARED_CORES_POOL, run_or_reuse
from widen_dag.profiles import Profile
from widen_dag.storage.artifacts import checkpoint_dir, read_manifest
from widen_dag.storage.reuse import recorded_version


def student_version(pipeline: PipelineResource) -> str | None:
    """The student base as an input: its recorded data version (bootstrap) or its hub id/path."""
    profile = pipeline.load_profile()
    ref = profile.models.student
    if ref.source in ("bootstrap", "gguf"):  # built or converted by student_base: its data version
        return recorded_version(pipeline.lake(), "student_base")
    return f"{ref.source}:{ref.name}@{ref.revision}"


def train_checkpoint(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    client: dg.PipesSubprocessClient,
    name: str,
    inputs: dict,
    config: dict,
    *args: str,
) -> dg.MaterializeResult:
    """Train (through the worker) unless the checkpoint in the lake came from the same data,
    base, configuration and code: a rerun with nothing changed does not retrain."""
    present = read_manifest(checkpoint_dir(pipeline.lake(), name)) is not None
    return run_or_reuse(context, pipeline, client, "train", *args, inputs=inputs, config=config, artifact_present=present)


@dg.asset(
    group_name="training",
    kinds={"pytorch", "safetensors"},
    code_version="sft_checkpoint-v2",
    **SHARED_CORES_POOL,
    deps=["sft_dataset", "student_base"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
)
def sft_checkpoint(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """The student after SFT (TRL SFTTrainer, loss on the assistant response only) on the
    longest correct path of each problem. An HF checkpoint (safetensors) in the lake with a
    manifest of the data versions it was trained on; metadata: loss curve, tokens/s, config."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    return train_checkpoint(
        context,
        pipeline,
        pipes_subprocess_client,
        "sft",
        {"sft_dataset": lake.table_sha256("sft_dataset"), "student_base": student_version(pipeline)},
        {"sft": profile.train.sft.model_dump(), "seed": profile.train.seed},
        "sft",
    )


def dpo_checkpoint_asset(profile: Profile) -> dg.AssetsDefinition:
    """The DPO asset, partitioned by the rows of the paper's ablation in the resolved profile
    (a variant is configuration only: profile train.dpo.variants)."""

    @dg.asset(
        group_name="training",
        kinds={"pytorch", "safetensors"},
        code_version="dpo_checkpoint-v1",
        **SHARED_CORES_POOL,
        partitions_def=dg.StaticPartitionsDefinition(list(profile.train.dpo.variants)),
        deps=["sft_checkpoint", "preference_pairs"],
        retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
    )
    def dpo_checkpoint(
        context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
    ) -> dg.MaterializeResult:
        """One row of the paper's ablation per partition, each from the SFT checkpoint with the
        SFT model as reference: `dpo` (sigmoid DPO, default pairs), `balanced` (+ shortest-correct
        chosen), `cdpo` (+ label smoothing), `joint` (+ alpha x SFT term), `joint_masked` (+ the
        shared-prefix mask on both terms)."""
        profile, lake, variant = pipeline.load_profile(), pipeline.lake(), context.partition_key
        dpo = profile.train.dpo
        config = {
            "dpo": dpo.model_dump(exclude={"variants"}),
            "variant": dpo.variants[variant].model_dump() if variant in dpo.variants else variant,
            "seed": profile.train.seed,
        }
        return train_checkpoint(
            context,
            pipeline,
            pipes_subprocess_client,
            f"dpo-{variant}",
            {
                "preference_pairs": lake.table_sha256("preference_pairs"),
                "sft_checkpoint": recorded_version(lake, "sft_checkpoint"),
            },
            config,
            "dpo",
            variant,
        )

    return dpo_checkpoint
