"""Launching a worker module through Dagster Pipes: the one way assets run torch/vLLM work.

``runtime.kind: local`` (default): a subprocess on this machine. ``runtime.kind: k8s``: a pod
through dagster-k8s's PipesK8sClient, with the pod spec from widen_dag.launch.scaleout.
"""

import contextlib
import os
import tempfile
import time
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not re-exported at top level in 1.13

from widen_dag.defs.resources import PipelineResource
from widen_dag.launch import cpus, gpus, scaleout
from widen_dag.launch.failures import FAILURE_FILE_EXTRA, read_failure
from widen_dag.launch.lifetime import LAUNCHER_PID_EXTRA
from widen_dag.profiles import Profile
from widen_dag.storage.reuse import ReuseRecord, config_hash, read_record, reuse_key, why_rebuild, write_record

GPU_POOL_TAG = "widen_dag/pool"
# The assets that launch workers: pool `gpu` limits them across runs. Where a run uses the
# multiprocess executor (`pool_executor_config`: GPU nodes), the op tag lets it hold them to the
# same limit, so a step queued behind another step of its run starts as that one ends, instead of
# at Dagster's next pool poll (a blocked step polls with back-off up to 15 s).
GPU_POOL: dict[str, Any] = {"pool": "gpu", "op_tags": {GPU_POOL_TAG: "gpu"}}
# On a machine without GPUs a pool-`gpu` worker takes the whole node (its engine fixes its threads
# at start: vLLM, evaluation's processes) unless its asset says it shares the cores: the trainers,
# whose threads follow the number of workers beside them (widen_dag.launch.cpus).
CORES_TAG = "widen_dag/cores"
SHARED_CORES_POOL: dict[str, Any] = {"pool": "gpu", "op_tags": {GPU_POOL_TAG: "gpu", CORES_TAG: "shared"}}


def shares_cores(assets_def: dg.AssetsDefinition) -> bool:
    return assets_def.op.tags.get(CORES_TAG) == "shared"


def trainers_can_overlap(job: dg.JobDefinition, keys: list[dg.AssetKey]) -> bool:
    """Whether two of the job's assets ``keys`` that share the cores could run at once: neither
    is upstream of the other (in the tiny demo, policy_model and student_base)."""
    graph = job.asset_layer.asset_graph
    sharing = [k for k in keys if shares_cores(graph.get(k).assets_def)]
    upstream = {key: graph.get_ancestor_asset_keys(key) for key in sharing}
    return any(a not in upstream[b] and b not in upstream[a] for i, a in enumerate(sharing) for b in sharing[i + 1 :])


def pool_executor_config(limit: int, node_has_gpus: bool = False, side_by_side: bool = True) -> dict[str, Any]:
    """Run config for a run's executor given the instance's pool `gpu` limit.

    A node without GPUs where the run's workers go one at a time (one pool slot, or
    ``side_by_side`` false: no two trainers of the run are independent of each other,
    ``trainers_can_overlap``): the in-process executor.
    The other steps take a second or two on the CPU profiles' data, and a process per step
    would only add its start. The torch/vLLM work still runs in Pipes workers, which stop
    themselves if this process dies (``widen_dag.launch.lifetime``). Otherwise (GPUs, or
    trainers sharing a CPU machine's cores: ``widen_dag.launch.cpus``) the multiprocess
    executor, with at most ``limit`` worker-launching steps of the run at once. On a CPU machine
    its step processes fork from a server that has imported Dagster and the definitions once (a
    spawned step process re-imports them: ~2.5 s per step on a 2-core CPU)."""
    if (limit == 1 or not side_by_side) and not node_has_gpus:
        return {"execution": {"config": {"in_process": {}}}}
    limits = [{"key": GPU_POOL_TAG, "value": "gpu", "limit": limit}]
    if node_has_gpus:  # Dagster's default start (spawn): a fresh interpreter per step, as before
        return {"execution": {"config": {"multiprocess": {"tag_concurrency_limits": limits}}}}
    preload = {"forkserver": {"preload_modules": ["dagster", "widen_dag.definitions"]}}
    return {"execution": {"config": {"multiprocess": {"tag_concurrency_limits": limits, "start_method": preload}}}}


def run_worker(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, client: dg.PipesSubprocessClient, module: str, *args: str
) -> dg.MaterializeResult:
    profile = pipeline.load_profile()
    processes = scaleout.training_processes(profile, module)
    if profile.runtime.kind == "k8s":
        return run_worker_pod(context, pipeline, profile, module, *args, num_processes=processes)
    timeout = profile.runtime.worker_timeout_s
    fd, failure_file = tempfile.mkstemp(prefix="widen-dag-failure-", suffix=".json")
    os.close(fd)
    os.unlink(failure_file)  # the worker creates it only for an unrecoverable failure
    # The GPUs this worker owns while it runs (pool `gpu` lets several run side by side on one node);
    # on a node without GPUs, its share of the cores (or all of them).
    node_gpus = gpus.node_gpu_ids(profile.runtime.gpus_per_node)
    on_wait = lambda message: context.log.info(f"{module}: {message}")  # noqa: E731
    lease = gpus.gpu_lease(scaleout.gpus_for(profile, module), node_gpus, on_wait=on_wait)
    sharing = shares_cores(context.assets_def)
    cores = contextlib.nullcontext(None) if node_gpus else cpus.cpu_lease(whole_node=not sharing, on_wait=on_wait)
    started = time.monotonic()
    try:
        with lease as owned, cores as share_dir:
            started = time.monotonic()  # waiting for GPUs or cores is not running
            env = {"CUDA_VISIBLE_DEVICES": ",".join(owned)} if owned else {}
            if share_dir is not None and sharing:
                env.update(cpus.worker_env(share_dir))
            return client.run(
                command=scaleout.worker_argv(
                    module,
                    *args,
                    num_processes=processes,
                    timeout_s=timeout,
                    accelerate_flags=scaleout.accelerate_args(profile, module),
                ),
                context=context,
                # the worker stops itself if this process dies (kill -9) while it runs
                extras={**pipeline.worker_extras(profile), FAILURE_FILE_EXTRA: failure_file, LAUNCHER_PID_EXTRA: os.getpid()},
                env=env or None,
            ).get_materialize_result()
    except gpus.GpuLeaseError as err:
        raise unrecoverable_failure(module, str(err), "set runtime.gpus_per_node, or ask for fewer GPUs per worker") from None
    except DagsterPipesExecutionError as err:
        found = read_failure(failure_file)
        if found:
            raise unrecoverable_failure(module, *found) from None
        # `timeout` only stops a worker once its time is up, so the clock alone recognises a hung
        # worker; the exit code in Dagster's message is a second sign, not the only one.
        if time.monotonic() - started >= timeout or f"code {scaleout.TIMEOUT_EXIT_CODE}" in str(err):
            # A hung worker: say so in the UI, and let the asset's retry policy run it again.
            raise dg.Failure(
                f"the {module} worker ran past runtime.worker_timeout_s={timeout}s and was stopped", allow_retries=True
            ) from err
        raise
    finally:
        if os.path.exists(failure_file):
            os.unlink(failure_file)


def unrecoverable_failure(stage: str, cause: str, fix: str) -> dg.Failure:
    """A failure no retry can fix: one line with the cause and the fix, in the run's failure
    metadata too, and no retries (the asset's RetryPolicy honours allow_retries=False)."""
    return dg.Failure(
        f"{stage}: {cause}. Fix: {fix}", allow_retries=False, metadata={"cause": cause, "fix": fix, "retryable": False}
    )


def run_worker_pod(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, profile: Profile, module: str, *args: str, num_processes: int
) -> dg.MaterializeResult:
    try:
        from dagster_k8s import PipesK8sClient
    except ImportError as err:  # the k8s extra is optional for local users
        raise dg.Failure("runtime.kind 'k8s' needs dagster-k8s: pip install 'widen-dag[k8s]'") from err
    cfg = scaleout.k8s_settings(profile)
    context.log.info(f"{module}: pod in namespace {cfg.namespace} with {scaleout.gpus_for(profile, module)} GPU(s)")
    return (
        PipesK8sClient()
        .run(
            context=context,
            namespace=cfg.namespace,
            command=scaleout.worker_argv(
                module,
                *args,
                num_processes=num_processes,
                python="python",
                accelerate_flags=scaleout.accelerate_args(profile, module),
            ),
            base_pod_spec=scaleout.pod_spec(profile, module),
            env=scaleout.pod_env(profile),
            extras=pipeline.worker_extras(profile),
        )
        .get_materialize_result()
    )


def _plain_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as JSON for the reuse record: numbers, text, Markdown and JSON values."""
    out: dict[str, Any] = {}
    for k, v in metadata.items():
        value = getattr(v, "value", v)
        if isinstance(v, dg.MarkdownMetadataValue):
            out[k] = {"md": value}
        elif isinstance(v, dg.JsonMetadataValue):
            out[k] = {"json": value}
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[k] = {"v": value}
    return out


def _restored_metadata(plain: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in plain.items():
        if "md" in v:
            out[k] = dg.MetadataValue.md(v["md"] or "")
        elif "json" in v:
            out[k] = dg.MetadataValue.json(v["json"])
        elif v.get("v") is not None:
            out[k] = v["v"]
    return out


def run_or_reuse(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    client: dg.PipesSubprocessClient,
    module: str,
    *args: str,
    inputs: dict[str, Any],
    config: Any,
    artifact_present: bool,
) -> dg.MaterializeResult:
    """``run_worker``, unless the lake already holds this stage's artifact built from the same
    inputs (content hashes and upstream data versions), configuration and code version: then the
    worker is not started and the recorded data version is reported again, so downstream stages
    see nothing changed. Metadata says which happened and why (``reused`` / ``ran_because``)."""
    lake = pipeline.lake()
    asset = context.asset_key.to_user_string()
    partition = context.partition_key if context.has_partition_key else None
    code_version = context.assets_def.code_versions_by_key.get(context.asset_key) or ""
    key = reuse_key(code_version, inputs, config)
    previous = read_record(lake, asset, partition)
    reasons = why_rebuild(previous, code_version, inputs, config, artifact_present)
    if previous is not None and not reasons:
        context.log.info(f"{asset}: reused (inputs, configuration and code unchanged since run {previous.run_id})")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(previous.data_version),
            metadata={
                **_restored_metadata(previous.metadata),
                "reused": True,
                "reused_from_run": previous.run_id,
                "reuse_key": key,
                "ran_because": "(skipped: inputs, configuration and code unchanged)",
            },
        )
    context.log.info(f"{asset}: building ({'; '.join(reasons)})")
    result = run_worker(context, pipeline, client, module, *args)
    version = result.data_version.value if result.data_version else key
    metadata = dict(result.metadata or {})
    write_record(
        lake,
        asset,
        partition,
        ReuseRecord(
            key=key,
            data_version=version,
            inputs=inputs,
            config_hash=config_hash(config),
            code_version=code_version,
            run_id=context.run_id,
            metadata=_plain_metadata(metadata),
        ),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={**metadata, "reused": False, "reuse_key": key, "ran_because": "; ".join(reasons)},
    )
