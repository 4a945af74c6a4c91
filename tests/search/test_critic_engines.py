"""Critic routing for real: a policy and a critic as two vLLM engines in one process, each
with its own chat template and KV-cache size, the critic writing the critic node types."""

from __future__ import annotations

import random

import polars as pl
import pytest

from tests.engines import TINY_ENGINE
from tests.search.fake_backend import search_context
from widen_dag.domains.base import Problem
from widen_dag.llm import create_backend
from widen_dag.profiles import SearchConfig
from widen_dag.search.lockstep import LockstepSearch
from widen_dag.search.store import tree_frame


@pytest.fixture(scope="module")
def llama3_checkpoint(tmp_path_factory):
    """An untrained tiny Llama with a Llama-3-style tokenizer (header turns, <|eot_id|> = EOS)."""
    from widen_dag.domains import math as math_domain
    from widen_dag.train import bootstrap, instruct

    out = tmp_path_factory.mktemp("critic_checkpoint")
    rng = random.Random(0)
    steps = [(3, "+", 4, 7), (7, "-", 2, 5)]
    corpus = [math_domain.task_prompt("Tom has 3 pens.") + instruct.math_response(steps, "5", rng, 0.3) for _ in range(200)]
    tok = instruct.train_tokenizer(corpus, 400, out, "llama3")
    bootstrap.new_model(tok, 64, 128, 2, 2, 512, seed=1).save_pretrained(out, safe_serialization=True)
    return out


@pytest.mark.slow
def test_critic_node_types_are_generated_by_the_critic_engine(tiny_vllm, llama3_checkpoint):
    policy = tiny_vllm  # the session's engine on the tiny checkpoint, with a 1 GiB KV cache
    settings = {k: v for k, v in TINY_ENGINE.items() if k != "cpu_kvcache_gib"}
    critic = create_backend("vllm", str(llama3_checkpoint), kv_cache_gib=0.25, **settings)
    try:
        # Each engine got its own KV cache size (not one process-wide setting).
        sizes = [b.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes for b in (policy, critic)]
        assert sizes == [2**30, 2**28]
        cfg = SearchConfig(
            action_graph={"root": {"thinking": 2}, "thinking": {"double_check": 2}, "double_check": {"answer": 1}},
            rollouts=2,
            k_min=0,
            k_max=1,
            give_up_factor=1,
            max_path_tokens=400,
            active_trees=4,
        )
        ctx = search_context(policy, cfg, critic, max_tokens_per_node=12, seed=1)
        trees = []
        problems = [Problem(f"p{i}", "math", f"Tom has {i} pens and buys 2 more. How many pens?", str(i + 2)) for i in range(3)]
        LockstepSearch({"policy": policy, "critic": critic}, ctx).run(problems, trees.append)
        nodes = pl.concat([tree_frame(t) for t in trees])
        by_type = dict(nodes.group_by("node_type").agg(pl.col("model").unique().sort()).iter_rows())
        assert by_type["double_check"] == ["critic"] and by_type["thinking"] == ["policy"]
        assert critic.stats.requests == nodes.filter(pl.col("node_type") == "double_check")["parent_id"].n_unique()
        assert critic.stats.prompt_tokens > 0 and policy.stats.requests > 0
        # The critic's prompts are in its own template, and its nodes counted in its own tokens.
        assert critic.chat_prompt("q").startswith("<|begin_of_text|><|start_header_id|>user")
        check = nodes.filter(pl.col("node_type") == "double_check").row(0, named=True)
        assert check["n_tokens"] == critic.count_tokens([check["text"]])[0]
    finally:
        critic.close()
