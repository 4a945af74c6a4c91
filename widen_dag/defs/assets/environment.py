"""The compute environment, measured by a Pipes worker (the pattern every torch stage copies)."""


import sys

import dagster as dg
from widen_dag.defs.resources import PipelineResource


@dg.asset(group_name="models", kinds={"pytorch", "python"}, code_version="compute_environment-v1", pool="gpu")
def compute_environment(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """Versions of torch/transformers/TRL/vLLM, the device and its measured matmul GFLOP/s,
    as seen by a worker process (`python -m widen_dag.workers.environment`)."""
    return pipes_subprocess_client.run(
        command=[sys.executable, "-m", "widen_dag.workers.environment"],
        context=context,
        extras=pipeline.worker_extras(),
    ).get_materialize_result()
