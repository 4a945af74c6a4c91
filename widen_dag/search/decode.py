"""MCTS decoding at evaluation (paper Table 7): the typed-thought search as a decoder.

The trained checkpoint is the only policy and the domain's verifier the oracle; each held-out
problem gets up to N rollouts and stops at its first correct answer, so a tree's rollout count
is the rollout that solved it. ``Test@k (MCTS)`` is the share solved within k rollouts, beside
sampled ``Test@k`` (solved by any of k samples). The lock-step scheduler runs the trees and a
TreeStore checkpoints every finished one, so a rerun resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from widen_dag.domains.base import Problem
from widen_dag.llm.base import Backend
from widen_dag.profiles import SearchConfig
from widen_dag.search.lockstep import LockstepSearch, SearchStats, tree_id_for
from widen_dag.search.mcts import SearchContext
from widen_dag.search.store import TreeStore


def decode_config(cfg: SearchConfig, rollouts: int) -> SearchConfig:
    """The search config with the decode stopping rule: the first correct answer (k_max = 1),
    or N rollouts without one (give_up_factor = 1)."""
    return cfg.model_copy(update={"rollouts": rollouts, "k_min": 1, "k_max": 1, "give_up_factor": 1})


@dataclass(frozen=True)
class DecodeRow:
    problem_id: str
    rollouts: int  # rollouts run; the solving rollout when solved
    solved: bool
    nodes: int

    @property
    def first_correct(self) -> int | None:
        return self.rollouts if self.solved else None


def mcts_decode(
    backend: Backend,
    ctx: SearchContext,
    problems: list[Problem],
    store: TreeStore,
    on_progress: Callable[[SearchStats], None] | None = None,
) -> tuple[list[DecodeRow], int, pl.DataFrame]:
    """(one row per problem, trees reused from checkpoints, the nodes of these problems' trees).
    ``ctx.cfg`` should come from ``decode_config``; the trees of problems already in ``store``
    are not searched again."""
    done = store.finished()
    todo = [p for p in problems if tree_id_for(p.problem_id, ctx.seed) not in done]
    LockstepSearch({"policy": backend}, ctx, on_progress=on_progress).run(todo, store.save)
    nodes, trees = store.load()
    by_problem = {r["problem_id"]: r for r in trees.iter_rows(named=True)}
    rows = []
    for p in problems:
        t = by_problem[p.problem_id]
        rows.append(DecodeRow(p.problem_id, t["rollouts"], t["correct"] > 0, t["nodes"]))
    ids = [p.problem_id for p in problems]
    return rows, len(problems) - len(todo), nodes.filter(pl.col("problem_id").is_in(ids))
