"""Launching a worker module through Dagster Pipes: the one way assets run torch/vLLM work.

``runtime.kind: local`` (default): a subprocess on this machine. ``runtime.kind: k8s``: a pod
through dagster-k8s's PipesK8sClient, with the pod spec from widen_dag.scaleout.
"""

import time

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not re-exported at top level in 1.13
from widen_dag import scaleout
from widen_dag.defs.resources import PipelineResource
from widen_dag.profiles import Profile


def run_worker(context: dg.AssetExecutionContext, pipeline: PipelineResource, client: dg.PipesSubprocessClient,
               module: str, *args: str) -> dg.MaterializeResult:
    profile = pipeline.load_profile()
    processes = scaleout.training_processes(profile, module)
    if profile.runtime.kind == "k8s":
        return run_worker_pod(context, profile, module, *args, num_processes=processes, seed=pipeline.seed)
    timeout = profile.runtime.worker_timeout_s
    started = time.monotonic()
    try:
        return client.run(
            command=scaleout.worker_argv(module, *args, num_processes=processes, timeout_s=timeout),
            context=context,
            extras=pipeline.worker_extras(),
        ).get_materialize_result()
    except DagsterPipesExecutionError as err:
        # `timeout` only stops a worker once its time is up, so the clock alone recognises a hung
        # worker; the exit code in Dagster's message is a second sign, not the only one.
        if time.monotonic() - started >= timeout or f"code {scaleout.TIMEOUT_EXIT_CODE}" in str(err):
            # A hung worker: say so in the UI, and let the asset's retry policy run it again.
            raise dg.Failure(f"the {module} worker ran past runtime.worker_timeout_s={timeout}s and was stopped",
                             allow_retries=True) from err
        raise


def run_worker_pod(context: dg.AssetExecutionContext, profile: Profile, module: str, *args: str,
                   num_processes: int, seed: int | None = None) -> dg.MaterializeResult:
    try:
        from dagster_k8s import PipesK8sClient
    except ImportError as err:  # the k8s extra is optional for local users
        raise dg.Failure("runtime.kind 'k8s' needs dagster-k8s: pip install 'widen-dag[k8s]'") from err
    cfg = scaleout.k8s_settings(profile)
    context.log.info(f"{module}: pod in namespace {cfg.namespace} with {scaleout.gpus_for(profile, module)} GPU(s)")
    return PipesK8sClient().run(
        context=context,
        namespace=cfg.namespace,
        command=scaleout.worker_argv(module, *args, num_processes=num_processes, python="python"),
        base_pod_spec=scaleout.pod_spec(profile, module),
        env=scaleout.pod_env(profile),
        extras={"profile": profile.name, "lake_root": cfg.lake_root, **({} if seed is None else {"seed": seed})},
    ).get_materialize_result()
