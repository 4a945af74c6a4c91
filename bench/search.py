"""Lock-step MCTS against the same search one tree at a time, on the tiny profile with vLLM.

    .venv/bin/python bench/search.py [--model lake/models/policy_model] [--problems 32]

Prints JSON with speedup_vs_sequential (same backend, model, seeds: the trees come out
identical, which `trees_identical` confirms), efficiency_vs_raw (search generated tokens/s
over the backend's tokens/s on one flat batch of the same requests), prefix_cache_hit_rate
and nodes_per_s of the lock-step run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

from widen_dag.domains import arithmetic
from widen_dag.domains.base import Problem
from widen_dag.llm import backend_from_profile
from widen_dag.profiles import load_profile
from widen_dag.search.lockstep import LockstepSearch
from widen_dag.search.mcts import SearchContext
from widen_dag.search.store import tree_frame


class Recording:
    """Wraps a backend, keeping every request it was sent."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.requests = []
        self.stats = inner.stats

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, requests):
        self.requests.extend(requests)
        return self.inner.generate(requests)


def _reset_cache(backend) -> None:
    llm = getattr(backend, "llm", None)
    if llm is not None and hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()


def _run(backend, profile, problems, active: int):
    cfg = profile.search.model_copy(update={"active_trees": active})
    ctx = SearchContext(
        cfg=cfg,
        chat_prompt=backend.chat_prompt,
        count_tokens=backend.count_tokens,
        temperature=profile.generation.temperature,
        top_p=profile.generation.top_p,
        max_tokens_per_node=profile.generation.max_tokens_per_node,
        has_critic=False,
        seed=profile.seed,
    )
    trees = {}
    _reset_cache(backend)
    before = (backend.stats.generated_tokens, backend.stats.prompt_tokens, backend.stats.cached_prompt_tokens)
    start = time.perf_counter()
    stats = LockstepSearch({"policy": backend}, ctx).run(problems, lambda t: trees.__setitem__(t.tree_id, t))
    seconds = time.perf_counter() - start
    gen = backend.stats.generated_tokens - before[0]
    prompt = backend.stats.prompt_tokens - before[1]
    cached = backend.stats.cached_prompt_tokens - before[2]
    frame = pl.concat([tree_frame(trees[k]) for k in sorted(trees)])
    return {
        "seconds": seconds,
        "generated_tokens": gen,
        "tok_per_s": gen / seconds,
        "nodes": stats.nodes,
        "nodes_per_s": stats.nodes / seconds,
        "mean_batch": stats.mean_batch_size,
        "prefix_cache_hit_rate": cached / prompt if prompt else 0.0,
    }, frame


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="lake/models/policy_model")
    ap.add_argument("--problems", type=int, default=160)
    ap.add_argument("--profile", default="tiny")
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        print(f"no model at {args.model}: run `make demo` (or materialize policy_model) first", file=sys.stderr)
        return 2
    profile = load_profile(args.profile)
    src = profile.datasets[0].source
    drawn = arithmetic.generate(args.problems, src.steps, src.max_operand, seed=2024, ops=src.ops)
    problems = [Problem(f"bench-{i:04d}", "arithmetic", p.question, p.gold) for i, p in enumerate(drawn)]
    backend = Recording(backend_from_profile(profile.generation, args.model, seed=profile.seed))
    try:
        backend.generate([])  # nothing; engine is up
        lock, lock_frame = _run(backend, profile, problems, active=max(args.problems, 1))
        recorded = list(backend.requests)
        seq, seq_frame = _run(backend, profile, problems, active=1)
        # The backend's own rate on one flat batch of the very requests the search made.
        _reset_cache(backend)
        flat = recorded
        start = time.perf_counter()
        before = backend.stats.generated_tokens
        for i in range(0, len(flat), profile.generation.max_num_seqs):
            backend.inner.generate(flat[i : i + profile.generation.max_num_seqs])
        raw_tok_per_s = (backend.stats.generated_tokens - before) / (time.perf_counter() - start)
    finally:
        backend.inner.close()
    print(
        json.dumps(
            {
                "backend": profile.generation.backend,
                "problems": args.problems,
                "speedup_vs_sequential": round(seq["seconds"] / lock["seconds"], 2),
                "efficiency_vs_raw": round(lock["tok_per_s"] / raw_tok_per_s, 3),
                "prefix_cache_hit_rate": round(lock["prefix_cache_hit_rate"], 4),
                "nodes_per_s": round(lock["nodes_per_s"], 1),
                "trees_identical": lock_frame.equals(seq_frame),
                "lockstep": {k: round(v, 2) for k, v in lock.items()},
                "sequential": {k: round(v, 2) for k, v in seq.items()},
                "raw_flat_batch_tok_per_s": round(raw_tok_per_s, 1),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
