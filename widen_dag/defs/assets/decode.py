"""MCTS decoding at evaluation (paper Table 7), run by a Pipes worker in pool `gpu`."""

import dagster as dg

from widen_dag.defs.assets.evaluation import ablation_checkpoint_versions
from widen_dag.defs.metadata import with_column_schema
from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import GPU_POOL, run_or_reuse
from widen_dag.evaluate.table7 import DECODE_SCHEMA


@dg.asset(
    group_name="evaluation",
    kinds={"vllm", "pytorch", "parquet"},
    code_version="mcts_decode-v3",
    **GPU_POOL,
    deps=["student_base", "distill_checkpoint", "sft_checkpoint", "dpo_checkpoint", "stg_problems"],
    # A crashed worker is retried; finished decode trees are reused from checkpoints.
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
)
def mcts_decode(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """The checkpoints of `eval.mcts_decode.variants` as MCTS decoders on every eval set: the
    typed-thought search with the checkpoint as the only policy and the verifier as oracle, up
    to N rollouts per problem, beside N samples per problem from the same checkpoint. One row
    per (checkpoint, problem, method: mcts | sampled) with attempts, correct count and the
    first successful attempt; metadata `table7` is the paper's Test@k layout."""
    # Decoded again only when a decoded checkpoint, the problems or the settings changed.
    profile, lake = pipeline.load_profile(), pipeline.lake()
    versions = ablation_checkpoint_versions(pipeline)  # every row the profile's validator allows
    inputs = {
        "stg_problems": lake.table_sha256("stg_problems"),
        **dict(versions[v] for v in profile.eval.mcts_decode.variants),
    }
    config = {
        "eval": profile.eval.model_dump(),
        "generation": profile.generation.model_dump(),
        "search": profile.search.model_dump(),
        "seed": profile.seed,
    }
    result = run_or_reuse(
        context,
        pipeline,
        pipes_subprocess_client,
        "decode",
        inputs=inputs,
        config=config,
        artifact_present=lake.has_table("mcts_decode"),
    )
    return with_column_schema(result, "mcts_decode", DECODE_SCHEMA)
