"""Worker commands and Kubernetes pod specs for scale-out on existing engines.

Knows nothing of Dagster: the Dagster layer (widen_dag.defs.workers) hands these to
PipesSubprocessClient (local) or dagster-k8s's PipesK8sClient (``runtime.kind: k8s``).
Multi-GPU work uses the engines' own mechanisms: vLLM tensor/data parallelism inside one
generation pod, ``accelerate launch`` with one process per GPU for training.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from widen_dag.launch import cpus, gpus
from widen_dag.profiles import K8sConfig, Profile, ProfileError
from widen_dag.storage.lake import default_lake_root

# Worker modules and the stage whose GPU count they need.
_GENERATION_MODULES = {"search", "evaluate", "decode"}
_TRAINING_MODULES = {"train"}


TIMEOUT_EXIT_CODE = 124  # coreutils `timeout`: the command ran out of time

# The worker image's layout: the repository's Dockerfile builds it with these paths (a test
# checks that the two agree). The caches are volumes: emptyDir, or a claim per
# runtime.k8s.volume_claims; the Trainer's resumable state sits inside the checkpoint cache
# (widen_dag.storage.artifacts.cache_root() / "trainer_state"), on a volume of its own.
CONTAINER_HOME = "/home/widen"
CONTAINER_WORKDIR = "/workspace"
CACHE_MOUNTS = {
    "model_cache": "/cache/huggingface",  # HF_HOME
    "checkpoint_cache": "/cache/widen_dag",  # WIDEN_DAG_CACHE
    "trainer_state": "/cache/widen_dag/trainer_state",
}


def accelerate_config_file(distributed: str) -> Path:
    """The accelerate config file shipped for ``train.distributed`` (ddp, fsdp, deepspeed_zero3)."""
    path = Path(str(resources.files("widen_dag.launch") / "accelerate" / f"{distributed}.yaml"))
    if not path.is_file():
        raise ValueError(f"train.distributed: no accelerate config for {distributed!r} (expected {path})")
    return path


def accelerate_args(profile: Profile, module: str) -> list[str]:
    """Flags for ``accelerate launch`` of a training worker: on CUDA the config file of
    ``train.distributed``; on CPU (``train.device: cpu``) the torchrun launcher behind
    ``--multi_gpu`` (accelerate's ``--cpu`` starts a single process), whose N ranks the Trainer
    (``use_cpu``) joins over gloo; FSDP on CPU uses the same config file as on CUDA, in fp32
    (``widen_dag.train.trainer.init_distributed`` gives its gloo ranks accelerate's FSDP state).
    DeepSpeed has no CPU path in accelerate: refused by name."""
    if module not in _TRAINING_MODULES or profile.train.num_processes <= 1:
        return []
    if profile.train.device == "cpu":
        if profile.train.distributed == "deepspeed_zero3":
            raise ValueError(
                "train.distributed: deepspeed_zero3 runs on CUDA only (accelerate starts DeepSpeed only on GPUs); "
                "with train.device: cpu use fsdp or ddp"
            )
        if profile.train.distributed == "fsdp":
            return ["--config_file", "fsdp", "--mixed_precision", "no"]
        return ["--multi_gpu"]
    # The shipped config by name: widen_dag.launch.accelerate_launch resolves it where the worker runs.
    accelerate_config_file(profile.train.distributed)  # an unknown name fails here, before any launch
    return ["--config_file", profile.train.distributed]


def worker_argv(
    module: str,
    *args: str,
    num_processes: int = 1,
    python: str = sys.executable,
    timeout_s: int | None = None,
    accelerate_flags: list[str] | None = None,
) -> list[str]:
    """``python -m widen_dag.workers.<module> args``; under ``accelerate launch`` for N > 1 (with
    ``accelerate_flags``, e.g. a shipped config's name, resolved by widen_dag.launch.accelerate_launch
    in the worker's own installation); under coreutils ``timeout`` (TERM, then KILL a minute later)
    when ``timeout_s`` is given. Nothing in it depends on this machine's paths or working directory."""
    target = ["-m", f"widen_dag.workers.{module}", *args]
    if num_processes > 1:
        argv = [
            python,
            "-m",
            "widen_dag.launch.accelerate_launch",
            *(accelerate_flags or []),
            "--num_processes",
            str(num_processes),
            *target,
        ]
    else:
        argv = [python, *target]
    if timeout_s is not None:
        argv = ["timeout", "--signal=TERM", "--kill-after=60", str(timeout_s), *argv]
    return argv


def training_processes(profile: Profile, module: str) -> int:
    return profile.train.num_processes if module in _TRAINING_MODULES else 1


def gpus_for(profile: Profile, module: str) -> int:
    """GPUs one worker of ``module`` needs: vLLM's tensor x data parallel size for generation,
    one per training process, none for CPU-only bookkeeping workers."""
    if module in _GENERATION_MODULES:
        return profile.generation.tensor_parallel_size * profile.generation.data_parallel_size
    if module in _TRAINING_MODULES:
        return profile.train.num_processes
    if module == "models":
        # Real profiles only record the named model; the tiny bootstrap trains on one device.
        return 0 if profile.models.policy.source != "bootstrap" else 1
    return 1 if module == "environment" else 0


def gpu_pool_limit(profile: Profile) -> int:
    """Slots of pool ``gpu`` on this node: how many search workers (one per problem shard) its
    GPUs hold side by side. A stage that needs more GPUs waits for them (widen_dag.launch.gpus).
    Local workers without GPUs: ``runtime.cpu_workers`` (widen_dag.launch.cpus)."""
    node_gpus = len(gpus.node_gpu_ids(profile.runtime.gpus_per_node))
    if node_gpus == 0 and profile.runtime.kind == "local":  # pods bring their own cores
        return cpus.cpu_pool_limit(profile.runtime.cpu_workers)
    return gpus.pool_limit(node_gpus, gpus_for(profile, "search"))


def k8s_settings(profile: Profile) -> K8sConfig:
    if profile.runtime.k8s is None:
        raise ValueError(f"profile {profile.name!r} has no runtime.k8s section")
    return profile.runtime.k8s


def _secret_env(cfg: K8sConfig) -> list[dict[str, Any]]:
    env = []
    for name, ref in sorted(cfg.secret_env.items()):
        secret, key = ref.split("/")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def pod_spec(profile: Profile, module: str) -> dict[str, Any]:
    """The base pod spec (Kubernetes camelCase) for one worker of ``module``: resources with
    GPU limits, a memory-backed /dev/shm, the cache volumes, the image's non-root user, node
    selection, and secrets as env vars only."""
    cfg = k8s_settings(profile)
    gpus = gpus_for(profile, module)
    limits: dict[str, str] = {"cpu": cfg.cpu, "memory": cfg.memory}
    if gpus:
        limits[cfg.gpu_resource] = str(gpus)
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    for key, path in CACHE_MOUNTS.items():
        name = key.replace("_", "-")  # volume names are DNS labels
        claim = cfg.volume_claims.get(key)
        volumes.append({"name": name, **({"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {}})})
        mounts.append({"name": name, "mountPath": path})
    container = {
        "name": "worker",
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "workingDir": CONTAINER_WORKDIR,
        "resources": {"requests": dict(limits), "limits": limits},
        "env": _secret_env(cfg),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed pod is retried by the asset's Dagster retry policy
        "activeDeadlineSeconds": profile.runtime.worker_timeout_s,  # a hung worker is stopped
        # runAsNonRoot alone refuses an image whose USER is a name; the ids make the check possible,
        # and fsGroup makes the cache volumes writable by that user.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_group,
            "fsGroup": cfg.run_as_group,
        },
        "containers": [container],
        "volumes": volumes,
    }
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    if cfg.node_selector and gpus:
        spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations and gpus:
        spec["tolerations"] = [dict(t) for t in cfg.tolerations]
    return spec


def deployment_lake_root(profile: Profile, configured: str | None, source: str = "$WIDEN_DAG_LAKE") -> str:
    """The one lake of a deployment, which Dagster reads and every worker (subprocess or pod) is
    handed: ``configured`` (a resource's lake_root or $WIDEN_DAG_LAKE, named by ``source``), else
    ./lake. For ``runtime.kind: k8s`` the pods' lake is ``runtime.k8s.lake_root``: it is the lake
    when nothing is configured, and a configured lake must be the same URI (a pod cannot be given
    a lake Dagster does not read)."""
    if profile.runtime.kind != "k8s" or profile.runtime.k8s is None:
        return configured or default_lake_root()
    pods = profile.runtime.k8s.lake_root
    if configured and configured.rstrip("/") != pods.rstrip("/"):
        raise ProfileError(
            f"runtime.k8s.lake_root: the pods would use {pods}, but Dagster reads the lake at {configured} "
            f"({source}); a stage could not find what another wrote. Make them the same URI, or unset "
            f"{source} to use the profile's."
        )
    return pods


def pod_env(profile: Profile) -> dict[str, str]:
    """Plain (non-secret) env of every worker pod: which profile and lake to use (the lake is
    Dagster's too: PipelineResource.lake_uri refuses one that differs), and where the caches are."""
    cfg = k8s_settings(profile)
    return {
        "WIDEN_DAG_PROFILE": profile.name,
        "WIDEN_DAG_LAKE": cfg.lake_root,
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": CONTAINER_HOME,
        "HF_HOME": CACHE_MOUNTS["model_cache"],
        "WIDEN_DAG_CACHE": CACHE_MOUNTS["checkpoint_cache"],
    }
