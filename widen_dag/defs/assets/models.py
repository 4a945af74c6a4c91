"""Model assets: the search policy and the student base, built or named by the profile."""

import dagster as dg

from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import run_worker


@dg.asset(
    group_name="models",
    kinds={"pytorch", "vllm"},
    code_version="policy_model-v1",
    pool="gpu",
    deps=["stg_problems"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)
def policy_model(context: dg.AssetExecutionContext, pipeline: PipelineResource,
                 pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The policy that writes the search's thoughts. Tiny profile: a tokenizer and a ~1M-parameter
    Llama trained here with TRL SFT on synthetic tagged arithmetic solutions (wrong steps
    included, caught by double-checks and reflections); metadata holds its held-out
    single-sample accuracy and well-formed rate. Real profiles: the named HF model."""
    return run_worker(context, pipeline, pipes_subprocess_client, "models", "policy")


@dg.asset(
    group_name="models",
    kinds={"pytorch", "vllm"},
    code_version="student_base-v1",
    pool="gpu",
    deps=["policy_model"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)
def student_base(context: dg.AssetExecutionContext, pipeline: PipelineResource,
                 pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The student before post-training. Tiny profile: the policy's architecture and tokenizer,
    trained briefly on plain untagged solutions, so the training stages have something to
    improve. Real profiles: the named HF model."""
    return run_worker(context, pipeline, pipes_subprocess_client, "models", "student")
