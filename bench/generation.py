"""Generation throughput of each backend on the tiny policy, and vLLM's prefix-cache hit rate.

    .venv/bin/python bench/generation.py [--model lake/models/policy_model] [--backends vllm,transformers]

Prints JSON: backends.<name>.tok_per_s_b{1,16,128} and backends.vllm.prefix_cache_hit_rate
(on a shared-prefix workload shaped like the search: siblings share their parent's path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from widen_dag.domains import arithmetic
from widen_dag.llm import GenerationRequest, create_backend
from widen_dag.search.thoughts import close_tag, open_tag


def _throughput(backend, prompts: list[str], batch: int, max_tokens: int) -> float:
    reqs = [GenerationRequest(prompt=p, max_tokens=max_tokens, temperature=0.7, top_p=0.9) for p in prompts[:batch]]
    start = time.perf_counter()
    out = backend.generate(reqs)
    elapsed = time.perf_counter() - start
    return sum(s.n_tokens for o in out for s in o) / elapsed


def _prefix_workload(backend, problems) -> float:
    """Parents first (their paths get cached), then 4 children per parent on the same path."""
    parents = [backend.chat_prompt(arithmetic.task_prompt(p.question), open_tag("sub_task")) for p in problems]
    first = backend.generate(
        [GenerationRequest(prompt=p, max_tokens=48, temperature=0.7, stop=(close_tag("sub_task"),)) for p in parents]
    )
    paths = [p + o[0].text for p, o in zip(parents, first, strict=True)]
    before = (backend.stats.prompt_tokens, backend.stats.cached_prompt_tokens)
    children = [
        GenerationRequest(prompt=path + open_tag(t), n=2, max_tokens=32, temperature=0.7, stop=(close_tag(t),))
        for path in paths
        for t in ("thinking", "double_check")
    ]
    backend.generate(children)
    prompt = backend.stats.prompt_tokens - before[0]
    cached = backend.stats.cached_prompt_tokens - before[1]
    return cached / prompt if prompt else 0.0


def run(model: str, backends: list[str], max_tokens: int) -> dict:
    problems = arithmetic.generate(256, 2, 9, seed=99, ops="+-")
    result: dict = {"model": model, "max_tokens": max_tokens, "backends": {}}
    for name in backends:
        start = time.perf_counter()
        backend = create_backend(
            name,
            model,
            device="cpu",
            seed=0,
            max_model_len=1024,
            max_num_seqs=256,
            cpu_kvcache_gib=1,
            enforce_eager=True,
            block_size=32,
        )
        startup = time.perf_counter() - start
        prompts = [backend.chat_prompt(arithmetic.task_prompt(p.question)) for p in problems]
        _throughput(backend, prompts, 4, 8)  # warm-up: first calls pay lazy initialisation
        entry = {"startup_s": round(startup, 1)}
        for b in (1, 16, 128):
            entry[f"tok_per_s_b{b}"] = round(_throughput(backend, prompts[b:], b, max_tokens), 1)
        if name == "vllm":
            entry["prefix_cache_hit_rate"] = round(_prefix_workload(backend, problems[:64]), 4)
        backend.close()
        result["backends"][name] = entry
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="lake/models/policy_model")
    ap.add_argument("--backends", default="vllm,transformers")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        print(f"no model at {args.model}: run `make demo` (or materialize policy_model) first", file=sys.stderr)
        return 2
    print(json.dumps(run(args.model, args.backends.split(","), args.max_tokens), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
