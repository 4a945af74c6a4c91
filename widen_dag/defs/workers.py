"""Launching a worker module through Dagster Pipes: the one way assets run torch/vLLM work."""

import sys

import dagster as dg
from widen_dag.defs.resources import PipelineResource


def worker_command(module: str, *args: str, num_processes: int = 1) -> list[str]:
    """``python -m widen_dag.workers.<module> args``; under `accelerate launch` for N > 1."""
    target = ["-m", f"widen_dag.workers.{module}", *args]
    if num_processes > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), *target]
    return [sys.executable, *target]


def run_worker(context: dg.AssetExecutionContext, pipeline: PipelineResource, client: dg.PipesSubprocessClient,
               module: str, *args: str, num_processes: int = 1) -> dg.MaterializeResult:
    return client.run(
        command=worker_command(module, *args, num_processes=num_processes),
        context=context,
        extras=pipeline.worker_extras(),
    ).get_materialize_result()
