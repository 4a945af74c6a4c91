"""Search trees drawn for search_trees' metadata and `widen-dag trace --png` (reporting.tree_plot)."""

from __future__ import annotations

import io

import polars as pl

from tests.lakes import build_small_lake, hand_built_trees, node_row, run_sql_models
from widen_dag.reporting.tree_plot import LEAF_MARKS, PATH_COLOURS, shard_tree_pictures, tree_png
from widen_dag.search.store import NODE_SCHEMA


def _pixels(png: bytes) -> set[tuple[int, int, int]]:
    from matplotlib import image

    rgb = (image.imread(io.BytesIO(png), format="png")[:, :, :3] * 255).round().astype(int)
    return {tuple(p) for p in rgb.reshape(-1, 3).tolist()}


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _unsolved_tree() -> pl.DataFrame:
    rows = [
        node_row("P9-s0", 0, None, "root", 0),
        node_row("P9-s0", 1, 0, "sub_task", 10),
        node_row("P9-s0", 2, 1, "answer", 5, reward=0.0, terminal=True),
        node_row("P9-s0", 3, 1, "answer", 5, reward=0.0, terminal=True, no_answer=True),
        node_row("P9-s0", 4, 0, "thinking", 40, reward=0.0, terminal=True),
    ]
    return pl.DataFrame(rows, schema=NODE_SCHEMA)


def _trees(nodes: pl.DataFrame) -> pl.DataFrame:
    """search_trees' per-tree summary (TREE_SCHEMA's tree_id / correct) of a node table."""
    return nodes.group_by("tree_id").agg(correct=(pl.col("reward") == 1).sum().cast(pl.Int32))


def test_a_tree_is_drawn_with_a_colour_per_thought_type_and_each_leaf_outcome_marked():
    pic = tree_png(_unsolved_tree().to_dicts(), "P9")
    assert pic.png.startswith(b"\x89PNG")
    assert pic.nodes == 5
    assert list(pic.colours) == ["root", "sub_task", "thinking", "answer"]
    assert pic.leaves == {"wrong": 1, "no answer": 1, "cut off": 1}
    assert pic.paths == {"chosen": 0, "rejected": 0}
    drawn = _pixels(pic.png)
    assert _rgb(pic.colours["sub_task"]) in drawn and _rgb(LEAF_MARKS["wrong"][1]) in drawn
    assert _rgb(PATH_COLOURS["chosen"]) not in drawn  # no pair, no path


def test_a_shard_shows_its_first_solved_and_first_unsolved_tree_and_a_pair_over_its_tree_once_pairs_exist(tmp_path):
    nodes = pl.concat([hand_built_trees(), _unsolved_tree()])
    before = shard_tree_pictures(nodes, _trees(nodes))
    assert [caption for caption, _ in before] == ["P1-s0 (first solved)", "P9-s0 (first unsolved)"]
    assert before[0][1].leaves["correct"] == 2 and "correct" not in before[1][1].leaves

    lake = build_small_lake(tmp_path)
    pairs = run_sql_models(lake)["preference_pairs"]
    after = shard_tree_pictures(nodes, _trees(nodes), pairs)
    caption, pic = after[0]
    assert caption == "P1-s0 (solved, with its balanced preference pair)"
    pair = pairs.filter((pl.col("tree_id") == "P1-s0") & (pl.col("pairing") == "balanced")).row(0, named=True)
    assert pic.paths == {"chosen": len(pair["chosen_node_ids"]) - 1, "rejected": len(pair["rejected_node_ids"]) - 1}
    drawn = _pixels(pic.png)
    assert _rgb(PATH_COLOURS["chosen"]) in drawn and _rgb(PATH_COLOURS["rejected"]) in drawn
