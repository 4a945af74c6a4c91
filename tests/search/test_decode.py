from __future__ import annotations

import polars as pl
import pytest

from tests.search.fake_backend import FakeBackend, arithmetic_problems, search_context
from widen_dag.evaluate.table7 import DECODE_SCHEMA, markdown_table7, summarize_decode
from widen_dag.profiles import SearchConfig
from widen_dag.search.decode import decode_config, mcts_decode
from widen_dag.search.mcts import SearchContext
from widen_dag.search.store import TreeStore
from widen_dag.storage.lake import Lake


def _ctx(backend: FakeBackend, rollouts: int) -> SearchContext:
    return search_context(backend, decode_config(SearchConfig(max_depth=12, max_path_tokens=600), rollouts))


def test_decode_stops_at_the_first_correct_answer_or_after_n_rollouts(tmp_path):
    backend = FakeBackend(p_correct=0.3)
    rows, reused, _ = mcts_decode(backend, _ctx(backend, 6), arithmetic_problems(20), TreeStore(Lake(str(tmp_path)), "dec", "k"))
    assert reused == 0 and len(rows) == 20
    solved = [r for r in rows if r.solved]
    assert solved and len(solved) < 20  # the coin makes some problems hard within 6 rollouts
    assert all(1 <= r.first_correct <= 6 for r in solved)
    assert all(r.rollouts <= 6 and r.first_correct is None for r in rows if not r.solved)
    # more rollouts never solve fewer problems: Test@k is non-decreasing in k
    at = [sum(r.solved and r.first_correct <= k for r in rows) for k in range(1, 7)]
    assert at == sorted(at) and at[-1] == len(solved)
    assert at[0] < at[-1]  # the search widens what is solved beyond its first rollout


def test_a_rerun_reuses_the_checkpointed_trees_and_gives_the_same_rows(tmp_path):
    lake = Lake(str(tmp_path))
    backend = FakeBackend(p_correct=0.3)
    first, _, _ = mcts_decode(backend, _ctx(backend, 4), arithmetic_problems(8), TreeStore(lake, "dec", "k"))
    calls = backend.stats.calls
    again, reused, _ = mcts_decode(backend, _ctx(backend, 4), arithmetic_problems(8), TreeStore(lake, "dec", "k"))
    assert reused == 8 and backend.stats.calls == calls
    assert again == first


def test_table7_puts_mcts_decode_beside_sampling_at_equal_k():
    base = {"checkpoint": "c", "eval_set": "arith", "budget": 4, "nodes": None}
    rows = [
        {**base, "variant": "sft", "problem_id": "a", "method": "sampled", "attempts": 4, "n_correct": 2, "first_correct": 2},
        {**base, "variant": "sft", "problem_id": "b", "method": "sampled", "attempts": 4, "n_correct": 0, "first_correct": None},
        {**base, "variant": "sft", "problem_id": "a", "method": "mcts", "attempts": 1, "n_correct": 1, "first_correct": 1},
        {**base, "variant": "sft", "problem_id": "b", "method": "mcts", "attempts": 3, "n_correct": 1, "first_correct": 3},
    ]
    summary = summarize_decode(pl.DataFrame(rows, schema=DECODE_SCHEMA), [1, 4])
    got = {r["method"]: (r["test_at_1"], r["test_at_4"]) for r in summary.iter_rows(named=True)}
    assert got["sampled"] == pytest.approx((0.25, 0.5))  # a: 2/4 at k=1, 1 at k=4; b: never
    assert got["mcts"] == pytest.approx((0.5, 1.0))  # a at rollout 1, b at rollout 3
    table = markdown_table7(summary, [1, 4])
    assert "| SFT | 25.0 | 50.0 |" in table and "| SFT + MCTS decode | 50.0 | 100.0 |" in table


def test_decode_diagnostics_count_how_rollouts_ended_and_which_node_types_the_token_limit_cut(tmp_path):
    from widen_dag.evaluate.table7 import decode_diagnostics, markdown_diagnostics

    store = TreeStore(Lake(str(tmp_path)), "dec", "k")
    backend = FakeBackend(p_correct=0.2, truncate_every=4)  # a quarter of all thoughts hit the token limit
    rows, _, nodes = mcts_decode(backend, _ctx(backend, 4), arithmetic_problems(12), store)
    assert nodes.equals(store.load()[0])  # the nodes of exactly these problems' trees
    sampled = [
        {"problem_id": "a", "cut_off": True, "no_answer": True},
        {"problem_id": "a", "cut_off": False, "no_answer": False},
        {"problem_id": "b", "cut_off": False, "no_answer": True},
        {"problem_id": "b", "cut_off": False, "no_answer": False},
    ]
    d = decode_diagnostics(nodes, sampled)

    terminal = nodes.filter(pl.col("is_terminal") & ~pl.col("node_type").is_in(["root", "reflection"]))
    assert d["mcts_paths"] == int(terminal["samples"].fill_null(1).sum()) > 0
    assert d["mcts_correct_share"] + d["mcts_wrong_share"] + d["mcts_no_answer_share"] == pytest.approx(1.0, abs=1e-3)
    assert 0 < d["mcts_no_answer_share"] < 1  # cut-off thoughts end their rollout without an answer
    # every no-answer rollout of the fake ended at a thought the token limit cut off
    assert sum(d["no_answer_ends"].values()) == pytest.approx(1.0, abs=1e-3)
    assert all(end.endswith(": length") for end in d["no_answer_ends"])
    solved_paths = terminal.filter(pl.col("reward") > 0)["samples"].fill_null(1).sum()
    assert d["mcts_correct_share"] == pytest.approx(solved_paths / d["mcts_paths"], abs=1e-4)
    assert sum(r.solved for r in rows) <= solved_paths
    # every generated node type shows up with its own cut-off share, near the injected quarter overall
    assert set(d["cut_off_by_node_type"]) == set(nodes["node_type"]) - {"root", "reflection"}
    assert set(d["foreign_tag_by_node_type"].values()) == {0.0}
    assert 0.1 < d["mcts_cut_off_share"] < 0.4
    assert (d["sampled"], d["sampled_cut_off_rate"], d["sampled_no_answer_rate"]) == (4, 0.25, 0.5)

    text = markdown_diagnostics({("sft", "arith"): d})
    assert text.splitlines()[2].startswith("| SFT | arith | ")
