"""Trees -> paths -> length balance -> preference pairs at search scale (1M to 20M nodes).

    .venv/bin/python bench/data_products.py [--max-nodes 20000000] [--sizes 1000000,4000000,...]
                                            [--batch-rows N] [--memory-limit 4GB] [--python]

For each size, a child process writes synthetic search trees of realistic shape to a fresh
lake (depth up to 16, 4-8 children per expanded node, ~half the terminal paths correct,
search_trees in shards, node_lengths and stg_problems beside them), and another child runs all
SQL models over it the way the Dagster asset does (DuckDB settings and batches from the tiny
profile's ``data.duckdb`` unless given). Each size reports wall seconds per model and in all,
rows/s, peak RSS of the child that ran the models, DuckDB's own memory report after each batch
(duckdb_memory(): held in memory / spilled) and seconds per million nodes; the sweep reports the
slope of seconds vs nodes and how far from linear the largest size is (per-node time relative
to the smallest). Prints JSON.

``--python`` (1M nodes only) also runs a plain-Python implementation of the same rules
(tree_paths, sft_dataset 'longest', preference_pairs) over the same lake and checks that both
produce the same three tables (every column, same row order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import polars as pl
import pyarrow as pa

from widen_dag.datasets.sql import DuckDBSettings, load_models, run_models
from widen_dag.profiles import load_profile
from widen_dag.search.store import NODE_SCHEMA
from widen_dag.storage.lake import Lake
from widen_dag.train.preference import common_prefix_length

TYPES = np.array(["sub_task", "thinking", "double_check", "thinking"])
SIZES = (1_000_000, 4_000_000, 10_000_000, 20_000_000)
SHARD_NODES = 1_000_000  # search_trees is written in shards (partitions) of about this many nodes


def _shape(
    rng: np.random.Generator, n_trees: int, max_depth: int = 16, p_expand: float = 0.17, p_terminal: float = 0.8
) -> list[np.ndarray]:
    """Tree structure, level by level across all trees at once: each expanded node gets 4-8
    children; a child is expanded further (p_expand, ~1.0 expanded children per parent keeps
    trees finite but deep), else a terminal answer (p_terminal) or an unexpanded leaf. Returns
    tree, node index, parent index, depth and kind (0 root, 1 inner, 2 terminal, 3 leaf)."""
    tree = np.arange(n_trees)
    idx = np.zeros(n_trees, dtype=np.int64)
    count = np.ones(n_trees, dtype=np.int64)
    out = [[tree], [idx], [np.full(n_trees, -1)], [np.zeros(n_trees, np.int64)], [np.zeros(n_trees, np.int8)]]
    for depth in range(1, max_depth + 1):
        if not len(tree):
            break
        k = rng.integers(4, 9, len(tree))
        child_tree, parent = np.repeat(tree, k), np.repeat(idx, k)
        starts = np.r_[True, child_tree[1:] != child_tree[:-1]]
        rank = np.arange(len(child_tree)) - np.maximum.accumulate(np.where(starts, np.arange(len(child_tree)), 0))
        child_idx = count[child_tree] + rank
        np.add.at(count, child_tree, 1)
        expand = (rng.random(len(child_tree)) < p_expand) & (depth < max_depth)
        kind = np.where(expand, 1, np.where(rng.random(len(child_tree)) < p_terminal, 2, 3)).astype(np.int8)
        for acc, col in zip(out, (child_tree, child_idx, parent, np.full(len(child_tree), depth), kind), strict=True):
            acc.append(col)
        tree, idx = child_tree[expand], child_idx[expand]
    return [np.concatenate(acc) for acc in out]


def synthetic_chunk(rng: np.random.Generator, first_tree: int, n_trees: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n_trees`` random trees (one per problem) in the search's node-table schema, and their
    staged problems. Rows go tree by tree, nodes in index order, as the search writes them."""
    tree, idx, parent, depth, kind = _shape(rng, n_trees)
    order = np.lexsort((idx, tree))
    tree, idx, parent, depth, kind = (a[order] for a in (tree, idx, parent, depth, kind))
    n = len(tree)
    terminal = kind == 2
    correct = terminal & (rng.random(n) < 0.5)
    no_answer = terminal & ~correct & (rng.random(n) < 0.2)
    ntype = np.where(kind == 0, "root", np.where(terminal, "answer", TYPES[np.clip(depth - 1, 0, 3)]))
    raw = pl.DataFrame(
        {
            "t": tree + first_tree,
            "i": idx,
            "p": parent,
            "depth": depth,
            "node_type": ntype,
            "n_tokens": rng.integers(5, 61, n),
            "is_terminal": terminal,
            "correct": correct,
            "no_answer": no_answer,
            "pad": rng.integers(5, 61, n),
        }
    )
    tree_id = pl.format("t{}", pl.col("t").cast(pl.String).str.zfill(7))
    text = pl.format("<{}>node {} {}</{}>", "node_type", "i", pl.lit("x" * 60).str.slice(0, pl.col("pad")), "node_type")
    nodes = raw.select(
        tree_id.alias("tree_id"),
        pl.format("p{}", pl.col("t").cast(pl.String).str.zfill(7)).alias("problem_id"),
        pl.format("{}/{}", tree_id, "i").alias("node_id"),
        pl.when(pl.col("p") >= 0).then(pl.format("{}/{}", tree_id, "p")).alias("parent_id"),
        "depth",
        "node_type",
        pl.lit("policy").alias("model"),
        pl.when(pl.col("i") > 0).then(text).otherwise(pl.lit("")).alias("text"),
        "n_tokens",
        pl.lit(1).alias("visits"),
        pl.lit(0.0).alias("value_sum"),
        "is_terminal",
        pl.when("is_terminal").then(pl.col("correct").cast(pl.Float64)).alias("reward"),
        pl.lit(None, pl.String).alias("answer"),
        "no_answer",
        pl.lit("stop").alias("finish_reason"),
        pl.lit("tag").alias("ended_by"),
        pl.lit(1).alias("samples"),
    ).cast(NODE_SCHEMA)
    ids = [f"p{t:07d}" for t in range(first_tree, first_tree + n_trees)]
    staged = pl.DataFrame({"problem_id": ids, "domain": "arithmetic", "split": "train", "prompt": [f"Solve {p}" for p in ids]})
    return nodes, staged


def build_lake(root: str, n_nodes: int, seed: int = 0) -> dict:
    """A lake holding ``n_nodes`` synthetic nodes (search_trees in shards, node_lengths,
    stg_problems), written chunk by chunk so the generator's memory stays small."""
    rng = np.random.default_rng(seed)
    lake = Lake(root)
    lengths, problems = lake.table_writer("node_lengths"), lake.table_writer("stg_problems")
    nodes = trees = shard = 0
    while nodes < n_nodes:
        # ~116 nodes per tree on average: size the chunk to land near the target
        chunk, staged = synthetic_chunk(rng, trees, max(1, min(8_000, (n_nodes - nodes) // 116 + 1)))
        lake.write_table("search_trees", chunk, f"synthetic-{shard:03d}")
        lengths.write(chunk.select("node_id", pl.col("n_tokens").alias("student_tokens")).to_arrow())
        problems.write(staged.to_arrow())
        nodes, trees, shard = nodes + chunk.height, trees + staged.height, shard + 1
    lengths.commit()
    problems.commit()
    return {"nodes": nodes, "trees": trees, "shards": shard}


def run_sql(root: str, settings: DuckDBSettings) -> dict:
    """All SQL models over the lake at ``root``, as the Dagster asset runs them."""
    lake = Lake(root)
    models = load_models()
    batches: list = []
    started = time.perf_counter()
    runs = list(run_models(lake, models, list(models), {"sft_selection": "longest"}, settings=settings, progress=batches.append))
    seconds = time.perf_counter() - started
    rows = {run.name: run.written.rows for run in runs}
    return {
        "seconds": round(seconds, 2),
        "query_seconds": {run.name: round(run.seconds, 2) for run in runs},
        "rows": rows,
        "rows_per_s": round(sum(rows.values()) / seconds),
        "batches": max(run.batches for run in runs),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        # CPU time barely moves when other jobs share the cores; wall seconds do
        "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        "duckdb_memory_mb_max": round(max((b.duckdb_memory_bytes for b in batches), default=0) / 2**20),
        "duckdb_spilled_mb_max": round(max((b.duckdb_temp_bytes for b in batches), default=0) / 2**20),
    }


MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
PATH_SCHEMA = {
    "problem_id": pl.String,
    "tree_id": pl.String,
    "path_id": pl.String,
    "node_ids": pl.List(pl.String),
    "node_idx": pl.List(pl.Int32),
    "path_text": pl.String,
    "correct": pl.Boolean,
    "no_answer": pl.Boolean,
    "depth": pl.Int64,
    "tokens": pl.Int32,
    "chars": pl.Int32,
    "cum_tokens": pl.List(pl.Int32),
    "cum_chars": pl.List(pl.Int32),
}
SFT_SCHEMA = {
    "problem_id": pl.String,
    "tree_id": pl.String,
    "path_id": pl.String,
    "node_ids": pl.List(pl.String),
    "messages": MESSAGES,
    "tokens": pl.Int32,
    "depth": pl.Int64,
    "selection": pl.String,
}
PAIR_SCHEMA = {
    "pairing": pl.String,
    "problem_id": pl.String,
    "tree_id": pl.String,
    "prompt": MESSAGES,
    "chosen": MESSAGES,
    "rejected": MESSAGES,
    "chosen_path_id": pl.String,
    "chosen_node_ids": pl.List(pl.String),
    "rejected_path_id": pl.String,
    "rejected_node_ids": pl.List(pl.String),
    "chosen_tokens": pl.Int32,
    "rejected_tokens": pl.Int32,
    "rejected_no_answer": pl.Boolean,
    "common_prefix_nodes": pl.Int64,
    "common_prefix_tokens": pl.Int32,
    "common_prefix_chars": pl.Int32,
}


def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    # column by column through Arrow's C++ converter: building nested columns from Python
    # objects row by row in Polars costs more than all the rules above
    empty = pl.DataFrame(schema=schema).to_arrow().schema
    table = pa.Table.from_pydict({k: [r[k] for r in rows] for k in schema}, schema=empty)
    return pl.from_arrow(table)


def python_reference(source: Lake, lake: Lake) -> dict[str, pl.DataFrame]:
    """The same rules as the SQL models (tree_paths, sft_dataset with 'longest', preference_pairs),
    in plain Python loops: reads the same input tables, writes the same tables to ``lake``."""
    nodes, lengths, staged = (source.read_all(name) for name in ("search_trees", "node_lengths", "stg_problems"))
    student = dict(zip(lengths["node_id"], lengths["student_tokens"], strict=True))
    by_id = {r["node_id"]: r for r in nodes.iter_rows(named=True)}
    problems = {r["problem_id"]: r for r in staged.iter_rows(named=True)}
    paths = []
    for r in by_id.values():
        if not r["is_terminal"]:
            continue
        chain = []
        cur = r
        while cur is not None:
            chain.append(cur)
            cur = by_id.get(cur["parent_id"]) if cur["parent_id"] else None
        chain.reverse()
        cum_t, cum_c = [0], [0]
        for n in chain[1:]:
            tokens = student.get(n["node_id"])
            cum_t.append(cum_t[-1] + (n["n_tokens"] if tokens is None else tokens))
            cum_c.append(cum_c[-1] + len(n["text"]))
        node_ids = [n["node_id"] for n in chain]
        paths.append(
            {
                "problem_id": r["problem_id"],
                "tree_id": r["tree_id"],
                "path_id": r["node_id"],
                "node_ids": node_ids,
                "node_idx": [int(i.rsplit("/", 1)[1]) for i in node_ids],
                "path_text": "".join(n["text"] for n in chain),
                "correct": r["node_type"] == "answer" and r["reward"] == 1.0,
                "no_answer": bool(r["no_answer"]),
                "depth": len(chain) - 1,
                "tokens": cum_t[-1],
                "chars": cum_c[-1],
                "cum_tokens": cum_t,
                "cum_chars": cum_c,
            }
        )
    paths.sort(key=lambda p: p["path_id"])
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for p in paths:
        by_problem[p["problem_id"]].append(p)
    sft, pairs = [], []
    for pid, ps in by_problem.items():
        correct = [p for p in ps if p["correct"]]
        if not correct or problems[pid]["split"] != "train":
            continue
        prompt = problems[pid]["prompt"]
        longest = min(correct, key=lambda p: (-p["tokens"], p["path_id"]))
        sft.append(
            {
                "problem_id": pid,
                "tree_id": longest["tree_id"],
                "path_id": longest["path_id"],
                "node_ids": longest["node_ids"],
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": longest["path_text"]}],
                "tokens": longest["tokens"],
                "depth": longest["depth"],
                "selection": "longest",
            }
        )
        chosen = {
            "balanced": min(correct, key=lambda p: (p["tokens"], p["path_id"])),
            "default": min(correct, key=lambda p: (hashlib.md5(p["path_id"].encode()).hexdigest(), p["path_id"])),
        }
        for pairing, c in chosen.items():
            wrong = [p for p in ps if not p["correct"] and p["tree_id"] == c["tree_id"]]
            if not wrong:
                continue
            shared, _, _, w = min(
                ((common_prefix_length(c["node_ids"], w["node_ids"]), w["tokens"], w["path_id"], w) for w in wrong),
                key=lambda s: s[:3],
            )
            pairs.append(
                {
                    "pairing": pairing,
                    "problem_id": pid,
                    "tree_id": c["tree_id"],
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": c["path_text"]}],
                    "rejected": [{"role": "assistant", "content": w["path_text"]}],
                    "chosen_path_id": c["path_id"],
                    "chosen_node_ids": c["node_ids"],
                    "rejected_path_id": w["path_id"],
                    "rejected_node_ids": w["node_ids"],
                    "chosen_tokens": c["tokens"],
                    "rejected_tokens": w["tokens"],
                    "rejected_no_answer": w["no_answer"],
                    "common_prefix_nodes": shared - 1,
                    "common_prefix_tokens": c["cum_tokens"][shared - 1],
                    "common_prefix_chars": c["cum_chars"][shared - 1],
                }
            )
    sft.sort(key=lambda r: (r["problem_id"], r["path_id"]))
    pairs.sort(key=lambda r: (r["pairing"], r["problem_id"]))
    out = {
        "tree_paths": _frame(paths, PATH_SCHEMA),
        "sft_dataset": _frame(sft, SFT_SCHEMA),
        "preference_pairs": _frame(pairs, PAIR_SCHEMA),
    }
    for name, df in out.items():
        lake.write_table(name, df)
    return out


def _child(*args: str) -> dict:
    # each stage in its own process: peak RSS is then that of the model run alone
    out = subprocess.run(
        [sys.executable, __file__, *args],
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    return json.loads(out.stdout)


def python_comparison(root: str) -> dict:
    """The SQL tables of the run at ``root`` against the plain-Python rules on the same lake."""
    lake = Lake(root)
    with tempfile.TemporaryDirectory() as py_tmp:
        started = time.perf_counter()
        ref = python_reference(lake, Lake(py_tmp))
        py_seconds = time.perf_counter() - started
    match = {name: lake.read_table(name).equals(df) for name, df in ref.items()}
    return {"python_seconds": round(py_seconds, 2), "outputs_match": all(match.values()), "match_by_model": match}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(str(n) for n in SIZES), help="node counts, comma-separated")
    ap.add_argument("--max-nodes", type=int, default=SIZES[-1], help="skip sizes above this")
    ap.add_argument("--batch-rows", type=int, help="default: the tiny profile's data.duckdb.batch_rows")
    ap.add_argument("--memory-limit", help="default: the tiny profile's data.duckdb.memory_limit")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--python", action="store_true", help="at 1M nodes, also compare with plain Python")
    ap.add_argument("--generate", nargs=2, metavar=("ROOT", "NODES"), help=argparse.SUPPRESS)
    ap.add_argument("--run", nargs=2, metavar=("ROOT", "SETTINGS"), help=argparse.SUPPRESS)
    ap.add_argument("--compare", metavar="ROOT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        print(json.dumps(build_lake(args.generate[0], int(args.generate[1]))))
        return 0
    if args.run:
        print(json.dumps(run_sql(args.run[0], DuckDBSettings(**json.loads(args.run[1])))))
        return 0
    if args.compare:
        print(json.dumps(python_comparison(args.compare)))
        return 0

    config = load_profile("tiny").data.duckdb.model_dump()
    config.update(
        {
            k: v
            for k, v in {"batch_rows": args.batch_rows, "memory_limit": args.memory_limit, "threads": args.threads}.items()
            if v is not None
        }
    )
    sizes = [n for n in (int(x) for x in args.sizes.split(",")) if n <= args.max_nodes]
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="widen-bench-") as root:
            made = _child("--generate", root, str(n))
            run = _child("--run", root, json.dumps(config))
            result = {**made, **run, "seconds_per_m_nodes": round(run["seconds"] / made["nodes"] * 1e6, 3)}
            if args.python and n == 1_000_000:
                result.update(_child("--compare", root))
                result["speedup_vs_python"] = round(result["python_seconds"] / result["seconds"], 2)
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)  # progress while the sweep goes on
    summary: dict = {"settings": config, "sizes": results, "largest_completed": results[-1]["nodes"] if results else 0}
    if len(results) > 1:
        x = np.array([r["nodes"] for r in results], dtype=float)
        y = np.array([r["seconds"] for r in results])
        slope, intercept = np.polyfit(x, y, 1)
        first, last = results[0], results[-1]
        summary.update(
            {
                "slope_seconds_per_m_nodes": round(slope * 1e6, 3),
                "intercept_seconds": round(intercept, 2),
                # per-node time at the largest size over that at the smallest: 1.0 is exactly linear
                "linearity_ratio": round(last["seconds_per_m_nodes"] / first["seconds_per_m_nodes"], 3),
                "max_peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            }
        )
    print(json.dumps(summary, indent=2))
    return 0 if all(r.get("outputs_match", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
