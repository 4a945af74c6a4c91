"""The compute environment, measured by a Pipes worker (the pattern every torch stage copies)."""

import dagster as dg

from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import GPU_POOL, run_worker


@dg.asset(
    group_name="models",
    kinds={"pytorch", "python"},
    code_version="compute_environment-v1",
    **GPU_POOL,
    retry_policy=dg.RetryPolicy(max_retries=1, delay=2),
)
def compute_environment(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """Versions of torch/transformers/TRL/vLLM, the device and its measured matmul GFLOP/s,
    as seen by a worker process (`python -m widen_dag.workers.environment`)."""
    return run_worker(context, pipeline, pipes_subprocess_client, "environment")
