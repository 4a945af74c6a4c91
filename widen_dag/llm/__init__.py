"""Generation backends behind one protocol (widen_dag.llm.base): ``vllm`` and ``transformers``."""

from __future__ import annotations

from widen_dag.llm.base import Backend, EngineStats, GenerationConfigError, GenerationRequest, Sample

BACKENDS = ("vllm", "transformers")


def create_backend(name: str, model: str, **kwargs) -> Backend:
    """A backend by name; settings it does not use are ignored, unknown names are an error."""
    if name == "vllm":
        from widen_dag.llm.vllm_backend import VLLMBackend

        kwargs.pop("max_batch", None)  # vLLM schedules its own batches (max_num_seqs)
        return VLLMBackend(model, **kwargs)
    if name == "transformers":
        from widen_dag.llm.hf_backend import TransformersBackend

        keep = {k: v for k, v in kwargs.items() if k in ("device", "dtype", "seed", "revision", "trust_remote_code", "max_batch")}
        return TransformersBackend(model, **keep)
    raise GenerationConfigError(f"generation.backend: unknown backend {name!r} (choose one of {', '.join(BACKENDS)})")


def backend_from_profile(gen, model: str, seed: int, revision: str | None = None, trust_remote_code: bool = False,
                         backend: str | None = None, **extra) -> Backend:
    """A backend from a profile's GenerationConfig (``backend`` overrides its choice, e.g. for eval;
    ``extra``: further backend settings such as the transformers ``max_batch``)."""
    return create_backend(
        backend or gen.backend, model, device=gen.device, dtype=gen.dtype, seed=seed, max_model_len=gen.max_model_len,
        max_num_seqs=gen.max_num_seqs, gpu_memory_utilization=gen.gpu_memory_utilization,
        cpu_kvcache_gib=gen.cpu_kvcache_gib, tensor_parallel_size=gen.tensor_parallel_size,
        data_parallel_size=gen.data_parallel_size, revision=revision, trust_remote_code=trust_remote_code,
        enforce_eager=gen.enforce_eager, block_size=gen.block_size, **extra,
    )


__all__ = ["BACKENDS", "Backend", "EngineStats", "GenerationConfigError", "GenerationRequest", "Sample", "backend_from_profile", "create_backend"]
