"""Child process for the kill -9 test: searches with the fake backend into a lake folder."""

from __future__ import annotations

import sys

from tests.search.fake_backend import FakeBackend, arithmetic_problems, search_context
from widen_dag.profiles import SearchConfig
from widen_dag.search.lockstep import LockstepSearch, tree_id_for
from widen_dag.search.store import TreeStore
from widen_dag.storage.lake import Lake

if __name__ == "__main__":
    lake_root, delay = sys.argv[1], float(sys.argv[2])
    backend = FakeBackend(delay_s=delay)
    ctx = search_context(backend, SearchConfig(rollouts=6, k_min=2, k_max=3, active_trees=4))
    store = TreeStore(Lake(lake_root), "shard-000", "k")
    done = store.finished()
    todo = [p for p in arithmetic_problems(24) if tree_id_for(p.problem_id, ctx.seed) not in done]
    print(f"reused {len(done)}", flush=True)

    def save(tree):
        store.save(tree)
        print("saved", flush=True)

    LockstepSearch({"policy": backend}, ctx).run(todo, save)
    nodes, _ = store.load()
    store.publish(nodes)
    print("published", flush=True)
