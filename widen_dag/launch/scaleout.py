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

from widen_dag.profiles import K8sConfig, Profile

# Worker modules and the stage whose GPU count they need.
_GENERATION_MODULES = {"search", "evaluate", "decode"}
_TRAINING_MODULES = {"train"}


TIMEOUT_EXIT_CODE = 124  # coreutils `timeout`: the command ran out of time


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
    (``use_cpu``) joins over gloo."""
    if module not in _TRAINING_MODULES or profile.train.num_processes <= 1:
        return []
    if profile.train.device == "cpu":
        return ["--multi_gpu"]
    return ["--config_file", str(accelerate_config_file(profile.train.distributed))]


def worker_argv(
    module: str,
    *args: str,
    num_processes: int = 1,
    python: str = sys.executable,
    timeout_s: int | None = None,
    accelerate_flags: list[str] | None = None,
) -> list[str]:
    """``python -m widen_dag.workers.<module> args``; under ``accelerate launch`` for N > 1 (with
    ``accelerate_flags``, e.g. the config file); under coreutils ``timeout`` (TERM, then KILL a
    minute later) when ``timeout_s`` is given."""
    target = ["-m", f"widen_dag.workers.{module}", *args]
    if num_processes > 1:
        argv = [
            python,
            "-m",
            "accelerate.commands.launch",
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
    GPU limits, a memory-backed /dev/shm, node selection, and secrets as env vars only."""
    cfg = k8s_settings(profile)
    gpus = gpus_for(profile, module)
    limits: dict[str, str] = {"cpu": cfg.cpu, "memory": cfg.memory}
    if gpus:
        limits[cfg.gpu_resource] = str(gpus)
    container = {
        "name": "worker",
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "resources": {"requests": dict(limits), "limits": limits},
        "env": _secret_env(cfg),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed pod is retried by the asset's Dagster retry policy
        "activeDeadlineSeconds": profile.runtime.worker_timeout_s,  # a hung worker is stopped
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}],
    }
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    if cfg.node_selector and gpus:
        spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations and gpus:
        spec["tolerations"] = [dict(t) for t in cfg.tolerations]
    return spec


def pod_env(profile: Profile) -> dict[str, str]:
    """Plain (non-secret) env of every worker pod: which profile and lake to use."""
    cfg = k8s_settings(profile)
    return {"WIDEN_DAG_PROFILE": profile.name, "WIDEN_DAG_LAKE": cfg.lake_root, "TOKENIZERS_PARALLELISM": "false"}
