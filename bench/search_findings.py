"""What the search found and why Table 7 came out as it did, read from a finished lake.

    .venv/bin/python bench/search_findings.py --lake lake-smollm2 [--examples 2]

Prints JSON:
  - search: trees, trees with a correct leaf (per data set), and per generated node type the
    nodes, no-answer rate and how thoughts ended (closing tag or stop string, end of turn,
    foreign tag, token limit), as `search_trees` reports them;
  - data: SFT rows and preference pairs the SQL layer made from the trees;
  - table7: Test@k per (checkpoint, eval set, method) from `mcts_decode`, and, from the decode
    trees kept in `search_checkpoints/`, how the MCTS rollouts ended (correct, wrong, no answer)
    and the share of each node type cut off by the per-node token limit;
  - eval: per (checkpoint, eval set) the share of evaluation samples cut off by eval.max_new_tokens
    and the no-answer rate, from `eval_results`;
  - examples: the correct path of the first solved trees, node by node (texts cut at 300 chars).

Nothing is recomputed from a model: the figures come from the lake's tables, so they are the
run's own. Not in CI (it needs a finished demo lake).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from widen_dag.evaluate.table7 import decode_diagnostics, summarize_decode
from widen_dag.search.format_stats import format_stats, generated_nodes, overall_ends
from widen_dag.storage.lake import Lake


def search_summary(nodes: pl.DataFrame, problems: pl.DataFrame) -> dict:
    trees = nodes.group_by("tree_id", "problem_id").agg(
        ((pl.col("reward").fill_null(0.0) > 0) & pl.col("is_terminal").fill_null(False)).any().alias("solved"),
        pl.len().alias("nodes"),
    )
    trees = trees.join(problems.select("problem_id", pl.col("source").alias("set")), on="problem_id", how="left")
    by_set = trees.group_by("set").agg(pl.len().alias("trees"), pl.col("solved").sum().alias("with_correct_leaf"))
    return {
        "trees": trees.height,
        "trees_with_a_correct_leaf": int(trees["solved"].sum()),
        "by_set": {
            r["set"]: {"trees": r["trees"], "with_correct_leaf": r["with_correct_leaf"]}
            for r in by_set.sort("set").iter_rows(named=True)
        },
        "nodes": int(generated_nodes(nodes).height),
        **overall_ends(nodes),
        "by_node_type": format_stats(nodes),
    }


def decode_folders(lake_dir: Path) -> dict[tuple[str, str], Path]:
    """(variant, eval set) -> the newest decode tree folder of that pair."""
    found: dict[tuple[str, str], Path] = {}
    root = lake_dir / "search_checkpoints"
    for folder in sorted(root.glob("mcts_decode-*"), key=lambda p: p.stat().st_mtime):
        variant_set = folder.name.removeprefix("mcts_decode-").rsplit("-", 1)[0]
        variant, eval_set = variant_set.split("-", 1) if "-" in variant_set else (variant_set, "")
        found[(variant, eval_set)] = folder
    return found


def table7(lake: Lake, lake_dir: Path) -> dict:
    if not lake.has_table("mcts_decode"):
        return {}
    rows = lake.read_table("mcts_decode")
    ks = sorted({1, *rows.filter(pl.col("method") == "sampled")["budget"].unique().to_list()})
    summary = summarize_decode(rows, ks)
    out: dict = {
        "test_at": {
            f"{r['variant']}/{r['eval_set']}/{r['method']}": {
                k: round(v, 4) for k, v in r.items() if k.startswith("test_at") or k == "n"
            }
            for r in summary.iter_rows(named=True)
        }
    }
    diagnostics = {}
    for (variant, eval_set), folder in decode_folders(lake_dir).items():
        nodes = pl.concat([pl.read_parquet(f) for f in sorted(folder.glob("*.parquet"))], how="diagonal_relaxed")
        d = decode_diagnostics(nodes, [])
        diagnostics[f"{variant}/{eval_set}"] = {k: v for k, v in d.items() if not k.startswith("sampled")}
    out["mcts_rollouts"] = diagnostics
    return out


def eval_cut_offs(lake: Lake) -> dict:
    if not lake.has_table("eval_results"):
        return {}
    res = lake.read_table("eval_results")
    group = [c for c in ("variant", "eval_set") if c in res.columns]
    agg = res.group_by(group).agg(
        pl.len().alias("samples"),
        pl.col("cut_off").mean().round(4).alias("cut_off_rate"),
        pl.col("no_answer").mean().round(4).alias("no_answer_rate"),
        (pl.col("cut_off") & pl.col("no_answer")).mean().round(4).alias("cut_off_no_answer_rate"),
    )
    return {
        "/".join(str(r[c]) for c in group): {
            k: r[k] for k in ("samples", "cut_off_rate", "no_answer_rate", "cut_off_no_answer_rate")
        }
        for r in agg.sort(group).iter_rows(named=True)
    }


def examples(nodes: pl.DataFrame, n: int) -> list[dict]:
    """The correct path (root to a correct answer) of the first ``n`` solved trees."""
    out = []
    correct = nodes.filter(pl.col("is_terminal").fill_null(False) & (pl.col("reward").fill_null(0.0) > 0))
    for leaf in correct.unique("tree_id", keep="first", maintain_order=True).head(n).iter_rows(named=True):
        tree = {r["node_id"]: r for r in nodes.filter(pl.col("tree_id") == leaf["tree_id"]).iter_rows(named=True)}
        path, node = [], leaf
        while node is not None:
            path.append({"type": node["node_type"], "ended_by": node["ended_by"], "text": (node["text"] or "")[:300]})
            node = tree.get(node["parent_id"])
        out.append({"tree_id": leaf["tree_id"], "path": path[::-1]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, required=True, help="a local lake folder after `widen-dag demo`")
    parser.add_argument("--examples", type=int, default=2, help="solved trees to print a correct path of")
    args = parser.parse_args()
    lake = Lake(str(args.lake.resolve()))
    nodes = lake.read_all("search_trees")
    out = {
        "lake": str(args.lake.resolve()),
        "search": search_summary(nodes, lake.read_table("stg_problems")),
        "data": {
            "sft_rows": lake.read_all("sft_dataset").height if lake.has_table("sft_dataset") else None,
            "preference_pairs": lake.read_all("preference_pairs").height if lake.has_table("preference_pairs") else None,
        },
        "table7": table7(lake, args.lake.resolve()),
        "eval": eval_cut_offs(lake),
        "examples": examples(nodes, args.examples),
    }
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
