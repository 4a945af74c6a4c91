"""Lock-step scheduling: many trees advance together, all their pending expansions in one batch.

Each active tree runs one rollout generator at a time; every step gathers the expansion each
tree is waiting on, sends them to the backend as one call per model (bounded by
``max_batch_sequences`` and ``max_batch_tokens``), and hands the samples back. A finished
tree is passed to ``on_tree_done`` (which persists it) and replaced by the next problem, so
the batch stays full. ``active_trees = 1`` is the same search one tree at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

from widen_dag.domains.base import Problem
from widen_dag.llm.base import Backend, Sample
from widen_dag.search.mcts import Expansion, SearchContext, rollout, stop_reason
from widen_dag.search.tree import Tree
from widen_dag.seeding import stable_seed


@dataclass
class SearchStats:
    trees: int = 0
    nodes: int = 0
    rollouts: int = 0
    batches: int = 0
    sequences: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        return self.sequences / self.batches if self.batches else 0.0

    @property
    def nodes_per_s(self) -> float:
        return self.nodes / self.seconds if self.seconds else 0.0


@dataclass
class _Active:
    tree: Tree
    gen: Generator[Expansion, list[list[Sample]], None] | None = None
    pending: Expansion | None = None


def tree_id_for(problem_id: str, seed: int) -> str:
    return f"{problem_id}-s{seed}"


class LockstepSearch:
    def __init__(
        self, backends: dict[str, Backend], ctx: SearchContext, on_progress: Callable[[SearchStats], None] | None = None
    ) -> None:
        if "policy" not in backends:
            raise ValueError("a policy backend is required")
        self.backends = backends
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.on_progress = on_progress

    def _advance(self, a: _Active) -> bool:
        """Run ``a``'s rollouts until one waits for an expansion (True) or the tree is done (False)."""
        while True:
            if a.gen is None:
                reason = stop_reason(a.tree, self.cfg)
                if reason is not None:
                    a.tree.outcome = reason
                    return False
                a.gen = rollout(a.tree, self.ctx)
                try:
                    a.pending = next(a.gen)
                    return True
                except StopIteration:
                    a.gen = None
                    continue
            return a.pending is not None

    def _send(self, a: _Active, results: list[list[Sample]]) -> None:
        assert a.gen is not None
        try:
            a.pending = a.gen.send(results)
        except StopIteration:
            a.gen, a.pending = None, None

    def _pick(self, active: list[_Active]) -> list[_Active]:
        """Waiting trees in order, within the batch's sequence and token bounds."""
        picked, seqs, tokens = [], 0, 0
        for a in active:
            exp = a.pending
            assert exp is not None
            n = sum(r.n for r in exp.requests)
            t = sum(r.n * (len(r.prompt or "") // 3 + r.max_tokens) for r in exp.requests)  # rough upper bound
            if picked and (seqs + n > self.cfg.max_batch_sequences or tokens + t > self.cfg.max_batch_tokens):
                break
            picked.append(a)
            seqs += n
            tokens += t
        return picked

    def run(self, problems: Iterable[Problem], on_tree_done: Callable[[Tree], None]) -> SearchStats:
        stats = SearchStats()
        start = time.perf_counter()
        queue: Iterator[Problem] = iter(problems)
        active: list[_Active] = []

        def refill() -> None:
            while len(active) < self.cfg.active_trees:
                spec = next(queue, None)
                if spec is None:
                    return
                tree = Tree(
                    tree_id_for(spec.problem_id, self.ctx.seed),
                    spec.problem_id,
                    spec.domain,
                    spec.question,
                    spec.gold,
                    seed=hash_seed(self.ctx.seed, spec.problem_id),
                )
                a = _Active(tree)
                if self._advance(a):
                    active.append(a)
                else:
                    finish(a)

        def finish(a: _Active) -> None:
            stats.trees += 1
            stats.nodes += len(a.tree.nodes)
            stats.rollouts += a.tree.rollouts
            stats.outcomes[a.tree.outcome or "?"] = stats.outcomes.get(a.tree.outcome or "?", 0) + 1
            on_tree_done(a.tree)

        refill()
        while active:
            picked = self._pick(active)
            by_role: dict[str, list[tuple[_Active, int]]] = {}
            for a in picked:
                assert a.pending is not None
                for k, role in enumerate(a.pending.roles):
                    by_role.setdefault(role, []).append((a, k))
            results: dict[int, dict[int, list[Sample]]] = {}
            for role, items in by_role.items():
                backend = self.backends.get(role, self.backends["policy"])
                outs = backend.generate([a.pending.requests[k] for a, k in items])  # type: ignore[union-attr]
                stats.batches += 1
                stats.sequences += sum(len(o) for o in outs)
                for (a, k), out in zip(items, outs, strict=True):
                    results.setdefault(id(a), {})[k] = out
            for a in picked:
                got = results[id(a)]
                self._send(a, [got[k] for k in range(len(got))])
                if not self._advance(a):
                    active.remove(a)
                    finish(a)
            refill()
            stats.seconds = time.perf_counter() - start
            if self.on_progress:
                self.on_progress(stats)
        stats.seconds = time.perf_counter() - start
        return stats


def hash_seed(seed: int, problem_id: str) -> int:
    return stable_seed(seed, problem_id, bits=64, byteorder="little")
