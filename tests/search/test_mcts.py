from __future__ import annotations

import math

import polars as pl
import pytest

from tests.search.fake_backend import FakeBackend, arithmetic_problems, search_context
from widen_dag.profiles import SearchConfig
from widen_dag.search.lockstep import LockstepSearch
from widen_dag.search.mcts import SearchContext, rollout, stop_reason
from widen_dag.search.store import tree_frame
from widen_dag.search.tree import Tree


def _ctx(backend: FakeBackend, **cfg) -> SearchContext:
    return search_context(backend, SearchConfig(**cfg))


def _search(backend, n_problems=6, **cfg) -> tuple[pl.DataFrame, dict]:
    trees = {}
    LockstepSearch({"policy": backend}, _ctx(backend, **cfg)).run(
        arithmetic_problems(n_problems), lambda t: trees.__setitem__(t.tree_id, t)
    )
    frame = pl.concat([tree_frame(trees[k]) for k in sorted(trees)])
    return frame, trees


# ---- UCT --------------------------------------------------------------------------------
def _hand_tree() -> Tree:
    t = Tree("t", "p", "arithmetic", "q", "7", seed=0)
    for _ in range(3):
        t.add_child(t.root, "sub_task", "policy", "<sub-task>x</sub-task>", 3)
    t.root.expanded = True
    return t


def test_uct_takes_unvisited_children_first_in_action_graph_order():
    t = _hand_tree()
    a, b, c = (t.nodes[i] for i in t.root.children)
    assert t.uct_child(t.root, 1.414) is a
    a.visits, a.value_sum = 1, 1.0
    assert t.uct_child(t.root, 1.414) is b


def test_uct_maximises_mean_value_plus_exploration():
    t = _hand_tree()
    a, b, c = (t.nodes[i] for i in t.root.children)
    t.root.visits = 10
    a.visits, a.value_sum = 5, 4.0  # 0.8 + 1.414*sqrt(2 ln10 / 5)
    b.visits, b.value_sum = 2, 1.0  # 0.5 + 1.414*sqrt(2 ln10 / 2)
    c.visits, c.value_sum = 3, 0.0
    score = {n.index: n.value_sum / n.visits + 1.414 * math.sqrt(2 * math.log(10) / n.visits) for n in (a, b, c)}
    assert t.uct_child(t.root, 1.414).index == max(score, key=score.get)
    assert t.uct_child(t.root, 0.0) is a  # c = 0: pure exploitation


def test_uct_ties_are_broken_by_the_trees_seeded_generator():
    picks = []
    for seed in (1, 1, 2, 3, 4, 5, 6):
        t = Tree("t", "p", "arithmetic", "q", "7", seed=seed)
        for _ in range(3):
            t.add_child(t.root, "sub_task", "policy", "x", 1).visits = 1
        t.root.visits = 3
        picks.append(t.uct_child(t.root, 1.414).index)
    assert picks[0] == picks[1]  # same seed, same choice
    assert len(set(picks)) > 1  # ties are not always the first child


# ---- reflection ---------------------------------------------------------------------------
def test_wrong_answer_adds_one_reflection_under_the_nearest_double_check():
    t = Tree("t", "p", "arithmetic", "q", "7", seed=0)
    st = t.add_child(t.root, "sub_task", "policy", "s", 1)
    th = t.add_child(st, "thinking", "policy", "t", 1)
    dc = t.add_child(th, "double_check", "policy", "d", 1)
    ans = t.add_child(dc, "answer", "policy", "a", 1)
    assert t.reflection_parent(ans) is dc
    ans2 = t.add_child(th, "answer", "policy", "a", 1)  # no double_check above: the parent
    assert t.reflection_parent(ans2) is th


def test_rollout_reflection_is_fixed_text_without_a_model_call():
    backend = FakeBackend(p_correct=0.0)
    frame, _ = _search(backend, n_problems=1, rollouts=2, give_up_factor=1, k_min=1, k_max=1)
    refl = frame.filter(pl.col("node_type") == "reflection")
    assert refl.height >= 1
    assert set(refl["text"]) == {"<reflection>Wait! something is wrong, let's think again.</reflection>"}
    assert set(refl["model"]) == {"fixed"}
    parents = frame.filter(pl.col("node_id").is_in(refl["parent_id"].to_list()))
    assert set(parents["node_type"]) <= {"double_check", "thinking"}


# ---- stopping -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rollouts", "correct", "expected"),
    [(3, 8, "solved"), (31, 4, None), (32, 4, "solved"), (32, 3, None), (127, 3, None), (128, 3, "budget"), (128, 0, "failed")],
)
def test_stopping_rules(rollouts, correct, expected):
    t = Tree("t", "p", "arithmetic", "q", "7", seed=0)
    t.rollouts = rollouts
    t.correct = set(range(correct))
    assert stop_reason(t, SearchConfig(rollouts=32, k_min=4, k_max=8, give_up_factor=4)) == expected


def test_search_stops_each_tree_by_the_rules_and_backs_up_visits():
    frame, trees = _search(FakeBackend(p_correct=0.5), rollouts=6, k_min=2, k_max=3, give_up_factor=2)
    for tree in trees.values():
        assert tree.outcome in ("solved", "budget", "failed")
        if tree.outcome == "solved":
            assert len(tree.correct) >= 2
        assert tree.root.visits == tree.rollouts
        assert tree.root.value_sum == sum(tree.nodes[i].visits for i in tree.correct)
    correct_answers = frame.filter((pl.col("node_type") == "answer") & (pl.col("reward") == 1.0))
    assert correct_answers.height == sum(len(t.correct) for t in trees.values())


def test_expansion_creates_all_children_of_the_action_graph_in_one_step():
    backend = FakeBackend()
    ctx = _ctx(backend)
    t = Tree("t", "p", "arithmetic", "q", "7", seed=0)
    gen = rollout(t, ctx)
    exp = next(gen)
    assert [r.n for r in exp.requests] == [2] and exp.child_types == ["sub_task"]
    exp = gen.send(backend.generate(exp.requests))
    assert exp.child_types == ["thinking"]
    exp = gen.send(backend.generate(exp.requests))
    assert exp.child_types == ["double_check", "thinking"] and [r.n for r in exp.requests] == [2, 2]
    assert all(
        r.stop[0] == f"</{'double-check' if ct == 'double_check' else ct}>"
        for r, ct in zip(exp.requests, exp.child_types, strict=True)
    )
    assert "</answer>" in exp.requests[0].stop  # a stray closing tag also ends the node
    assert exp.requests[0].prompt.endswith("<double-check>" + exp.prefills[0])


# ---- limits -------------------------------------------------------------------------------
def test_max_depth_ends_paths_as_no_answer():
    frame, _ = _search(FakeBackend(p_correct=0.0), n_problems=2, max_depth=3, rollouts=4, give_up_factor=1, k_min=1, k_max=1)
    assert frame["depth"].max() <= 3
    dead = frame.filter(pl.col("is_terminal") & (pl.col("node_type") != "answer"))
    assert dead.height > 0 and dead["no_answer"].all() and (dead["reward"] == 0).all()


def test_truncated_nodes_and_path_token_limit_end_as_no_answer():
    frame, _ = _search(
        FakeBackend(p_correct=0.5, truncate_every=3), n_problems=3, max_path_tokens=60, rollouts=4, give_up_factor=1
    )
    truncated = frame.filter(pl.col("finish_reason") == "length")
    assert truncated.height > 0 and truncated["is_terminal"].all() and truncated["no_answer"].all()


# ---- determinism, batching ----------------------------------------------------------------
def test_same_seed_gives_the_same_trees():
    a, _ = _search(FakeBackend(), rollouts=6, k_min=2, k_max=3)
    b, _ = _search(FakeBackend(), rollouts=6, k_min=2, k_max=3)
    assert a.equals(b)


def test_lockstep_batches_many_trees_and_equals_one_tree_at_a_time():
    many_backend, one_backend = FakeBackend(), FakeBackend()
    many, _ = _search(many_backend, n_problems=8, rollouts=6, k_min=2, k_max=3, active_trees=8)
    one, _ = _search(one_backend, n_problems=8, rollouts=6, k_min=2, k_max=3, active_trees=1)
    assert many.equals(one)
    assert max(many_backend.batch_sizes) > 4 * max(one_backend.batch_sizes)
    assert len(many_backend.batch_sizes) < len(one_backend.batch_sizes)


def test_batch_is_bounded_by_max_sequences():
    backend = FakeBackend()
    _search(backend, n_problems=10, rollouts=4, active_trees=10, max_batch_sequences=6)
    assert max(backend.batch_sizes) <= 6


def test_node_ids_are_unique_and_parents_exist():
    frame, _ = _search(FakeBackend(), rollouts=6)
    assert frame["node_id"].n_unique() == frame.height
    parents = set(frame["parent_id"].drop_nulls())
    assert parents <= set(frame["node_id"])
