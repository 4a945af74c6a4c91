"""Generation backends behind one protocol (widen_dag.llm.base): ``vllm`` and ``transformers``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from widen_dag.llm.base import Backend, EngineStats, GenerationConfigError, GenerationRequest, Sample, backend_device

if TYPE_CHECKING:
    from widen_dag.storage.artifacts import ModelLocation

BACKENDS = ("vllm", "transformers")


def create_backend(name: str, model: str, **kwargs) -> Backend:
    """A backend by name; settings it does not use are ignored, unknown names are an error."""
    kwargs.pop("data_parallel_size", None)  # replicas are backend_from_profile's business, never one engine's
    if name == "vllm":
        from widen_dag.llm.vllm_backend import VLLMBackend

        kwargs.pop("max_batch", None)  # vLLM schedules its own batches (max_num_seqs)
        return VLLMBackend(model, **kwargs)
    if name == "transformers":
        from widen_dag.llm.hf_backend import TransformersBackend

        keep = {k: v for k, v in kwargs.items() if k in ("device", "dtype", "seed", "revision", "trust_remote_code", "max_batch")}
        return TransformersBackend(model, **keep)
    raise GenerationConfigError(f"generation.backend: unknown backend {name!r} (choose one of {', '.join(BACKENDS)})")


def backend_from_profile(gen, model: ModelLocation | str, seed: int, backend: str | None = None, memory=None, **extra) -> Backend:
    """A backend from a profile's GenerationConfig for a resolved model (its revision and
    trust_remote_code go with it); ``backend`` overrides the profile's choice, e.g. for eval.
    ``memory``: the model's ModelRef, whose gpu_memory_utilization / kv_cache_gib (when set)
    replace the profile-wide ones, so two engines can share one device. ``data_parallel_size`` > 1:
    that many replica processes, one engine each on its own GPUs; ``extra``: further backend
    settings such as the transformers ``max_batch``, or ones that replace the profile's (``dtype``)."""
    name = model if isinstance(model, str) else model.name_or_path
    revision = None if isinstance(model, str) else model.revision
    trust_remote_code = False if isinstance(model, str) else model.trust_remote_code
    kwargs = dict(
        device=gen.device,
        dtype=gen.dtype,
        seed=seed,
        max_model_len=gen.max_model_len,
        max_num_seqs=gen.max_num_seqs,
        gpu_memory_utilization=getattr(memory, "gpu_memory_utilization", None) or gen.gpu_memory_utilization,
        kv_cache_gib=getattr(memory, "kv_cache_gib", None),
        cpu_kvcache_gib=gen.cpu_kvcache_gib,
        revision=revision,
        trust_remote_code=trust_remote_code,
        enforce_eager=gen.enforce_eager,
        block_size=gen.block_size,
    )
    kwargs.update(extra)
    if gen.data_parallel_size > 1:
        from widen_dag.llm.replicas import DataParallelBackend

        return DataParallelBackend(
            backend or gen.backend,
            name,
            replicas=gen.data_parallel_size,
            tensor_parallel_size=gen.tensor_parallel_size,
            pin_gpus=gen.device != "cpu",
            **kwargs,
        )
    return create_backend(backend or gen.backend, name, tensor_parallel_size=gen.tensor_parallel_size, **kwargs)


def resolve_eval_dtype(dtype: str, device: str) -> str:
    """``bfloat16_on_amx``: bfloat16 where it is the fast dtype (a GPU, or a CPU with AMX tiles),
    float32 on other CPUs, whose bfloat16 kernels were slower than float32 here (0.71x on an AMD
    EPYC with AVX-512 BF16). Any other value is returned as it is."""
    if dtype != "bfloat16_on_amx":
        return dtype
    import torch

    if backend_device(device) == "cuda":
        return "bfloat16"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bfloat16" if amx is not None and amx() else "float32"


def eval_dtype(profile) -> str:
    """The dtype evaluation loads models in on this machine: ``eval.dtype`` (unset: the
    generation dtype), ``bfloat16_on_amx`` resolved."""
    return resolve_eval_dtype(profile.eval.dtype or profile.generation.dtype, profile.generation.device)


def eval_backend_from_profile(profile, model: ModelLocation | str, seed: int) -> Backend:
    """The backend evaluation scores with (eval_results, Table 7, the bootstrap's held-out check):
    ``eval.backend``, ``eval_dtype(profile)`` and ``eval.batch_size``."""
    ev, gen = profile.eval, profile.generation
    return backend_from_profile(gen, model, seed=seed, backend=ev.backend, dtype=eval_dtype(profile), max_batch=ev.batch_size)


__all__ = [
    "BACKENDS",
    "Backend",
    "EngineStats",
    "GenerationConfigError",
    "GenerationRequest",
    "Sample",
    "backend_from_profile",
    "eval_backend_from_profile",
    "eval_dtype",
    "resolve_eval_dtype",
    "create_backend",
]
