"""A deterministic stand-in for a generation backend, for testing the search's logic.

Each sample's text is a function of the request's seed, the sample index and the node type
(read from the prompt's last open tag), so results do not depend on batch composition,
exactly like vLLM with per-request seeds. Answers are right or wrong by a seeded coin.
"""

from __future__ import annotations

import random
import re
import time

from widen_dag.domains.base import Problem
from widen_dag.llm.base import Backend, EngineStats, GenerationRequest, Sample
from widen_dag.profiles import SearchConfig
from widen_dag.search.mcts import SearchContext

_LAST_OPEN = re.compile(r"<([a-z_-]+)>[^<]*$")


class FakeBackend:
    name = "fake"
    model_name = "fake"

    def __init__(self, p_correct: float = 0.4, delay_s: float = 0.0, truncate_every: int = 0, gold: str = "7") -> None:
        self.p_correct = p_correct
        self.delay_s = delay_s
        self.truncate_every = truncate_every
        self.gold = gold
        self.stats = EngineStats()
        self.batch_sizes: list[int] = []

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return f"<|user|>{user}<|end|><|assistant|>{assistant_prefix}"

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [max(1, len(t) // 4) for t in texts]

    def generate(self, requests: list[GenerationRequest]) -> list[list[Sample]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        self.batch_sizes.append(sum(r.n for r in requests))
        for r in requests:
            tag = _LAST_OPEN.search(r.prompt or "").group(1)
            samples = []
            for k in range(r.n):
                rng = random.Random(f"{r.seed}:{k}")
                if tag == "answer":
                    value = self.gold if rng.random() < self.p_correct else str(rng.randint(10, 99))
                    body = f" \\boxed{{{value}}}"
                else:
                    body = f" step {rng.randint(0, 999)}"
                if self.truncate_every and rng.randrange(self.truncate_every) == 0:
                    samples.append(Sample(body * 50, r.max_tokens, -5.0, "length"))
                    continue
                text = body + (r.stop[0] if r.stop and r.include_stop else "")
                samples.append(Sample(text, len(text) // 4 + 1, -1.0, "stop"))
                self.stats.generated_tokens += len(text) // 4 + 1
            out.append(samples)
        self.stats.calls += 1
        return out

    def close(self) -> None:
        pass


def search_context(policy: Backend, cfg: SearchConfig, critic: Backend | None = None, **overrides) -> SearchContext:
    """The search context the search tests share: the policy's (and critic's) prompts and token
    counts, fixed sampling; ``overrides`` replace a field (e.g. the seed)."""
    fields = dict(
        cfg=cfg,
        chat_prompt=policy.chat_prompt,
        count_tokens=policy.count_tokens,
        temperature=0.7,
        top_p=0.9,
        max_tokens_per_node=64,
        has_critic=critic is not None,
        seed=5,
        critic_chat_prompt=critic.chat_prompt if critic else None,
        critic_count_tokens=critic.count_tokens if critic else None,
    )
    return SearchContext(**{**fields, **overrides})


def arithmetic_problems(n: int) -> list[Problem]:
    """n one-line problems whose gold is 7 (the fake backend answers them right or wrong by seed)."""
    return [Problem(f"p{i:03d}", "arithmetic", f"Ann has {i} apples. How many apples does Ann have?", "7") for i in range(n)]
