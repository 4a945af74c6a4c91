"""Trees -> paths -> length balance -> preference pairs on 1,000,000 synthetic nodes.

    .venv/bin/python bench/data_products.py [--nodes 1000000]

Runs the SQL models (tree_paths, sft_dataset, preference_pairs) over DuckDB, and a plain-
Python implementation of the same rules; both read the same lake tables, produce the same three
tables (every column, same row order) and write them to a lake. Prints JSON with `nodes`,
`seconds` (SQL, with `query_seconds` per model), `python_seconds`, `speedup_vs_python` and
`outputs_match` (whole tables equal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import defaultdict

import polars as pl
import pyarrow as pa

from widen_dag.datasets.sql import load_models, run_models
from widen_dag.search.store import NODE_SCHEMA
from widen_dag.storage.lake import Lake
from widen_dag.train.preference import common_prefix_length

TYPES = ["sub_task", "thinking", "double_check", "thinking", "answer"]


def synthetic_nodes(n_nodes: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Random trees in the search's node-table schema (+ a staged-problems table)."""
    rng = random.Random(seed)
    cols: dict[str, list] = {k: [] for k in NODE_SCHEMA}
    problems = []
    t = 0
    while len(cols["node_id"]) < n_nodes:
        tree, pid = f"t{t:06d}", f"p{t:06d}"
        problems.append(pid)
        frontier = [(f"{tree}/0", 0)]
        count = 1
        cols_row = [tree, pid, f"{tree}/0", None, 0, "root", "", "", 0, 1, 0.0, False, None, None, False, "stop", "", 1]
        for k, v in zip(NODE_SCHEMA, cols_row, strict=True):
            cols[k].append(v)
        size = rng.randint(40, 160)
        while frontier and count < size:
            parent, depth = frontier.pop(rng.randrange(len(frontier)))
            for _ in range(rng.randint(1, 3)):
                node_id = f"{tree}/{count}"
                count += 1
                leaf = depth + 1 >= 6 or rng.random() < 0.25
                ntype = "answer" if leaf else TYPES[min(depth, 3)]
                reward = (1.0 if rng.random() < 0.4 else 0.0) if leaf else None
                no_answer = leaf and reward == 0.0 and rng.random() < 0.2
                text = f"<{ntype}>node {count} {'x' * rng.randint(5, 60)}</{ntype}>"
                row = [tree, pid, node_id, parent, depth + 1, ntype, "policy", text, rng.randint(5, 60), 1, 0.0,
                       leaf, reward, None, no_answer, "stop", "tag", 1]
                for k, v in zip(NODE_SCHEMA, row, strict=True):
                    cols[k].append(v)
                if not leaf:
                    frontier.append((node_id, depth + 1))
        t += 1
    nodes = pl.DataFrame(cols, schema=NODE_SCHEMA)
    staged = pl.DataFrame({"problem_id": problems, "domain": "arithmetic", "split": "train",
                           "prompt": [f"Solve {p}" for p in problems]})
    return nodes, staged


MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
PATH_SCHEMA = {"problem_id": pl.String, "tree_id": pl.String, "path_id": pl.String, "node_ids": pl.List(pl.String),
               "node_idx": pl.List(pl.Int32), "path_text": pl.String, "correct": pl.Boolean, "no_answer": pl.Boolean,
               "depth": pl.Int64, "tokens": pl.Int32, "chars": pl.Int32, "cum_tokens": pl.List(pl.Int32),
               "cum_chars": pl.List(pl.Int32)}
SFT_SCHEMA = {"problem_id": pl.String, "tree_id": pl.String, "path_id": pl.String, "node_ids": pl.List(pl.String),
              "messages": MESSAGES, "tokens": pl.Int32, "depth": pl.Int64, "selection": pl.String}
PAIR_SCHEMA = {"pairing": pl.String, "problem_id": pl.String, "tree_id": pl.String, "prompt": MESSAGES,
               "chosen": MESSAGES, "rejected": MESSAGES, "chosen_path_id": pl.String, "chosen_node_ids": pl.List(pl.String),
               "rejected_path_id": pl.String, "rejected_node_ids": pl.List(pl.String), "chosen_tokens": pl.Int32,
               "rejected_tokens": pl.Int32, "rejected_no_answer": pl.Boolean, "common_prefix_nodes": pl.Int64,
               "common_prefix_tokens": pl.Int32, "common_prefix_chars": pl.Int32}


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
        paths.append({"problem_id": r["problem_id"], "tree_id": r["tree_id"], "path_id": r["node_id"], "node_ids": node_ids,
                      "node_idx": [int(i.rsplit("/", 1)[1]) for i in node_ids],
                      "path_text": "".join(n["text"] for n in chain),
                      "correct": r["node_type"] == "answer" and r["reward"] == 1.0, "no_answer": bool(r["no_answer"]),
                      "depth": len(chain) - 1, "tokens": cum_t[-1], "chars": cum_c[-1], "cum_tokens": cum_t, "cum_chars": cum_c})
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
        sft.append({"problem_id": pid, "tree_id": longest["tree_id"], "path_id": longest["path_id"],
                    "node_ids": longest["node_ids"],
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": longest["path_text"]}],
                    "tokens": longest["tokens"], "depth": longest["depth"], "selection": "longest"})
        chosen = {"balanced": min(correct, key=lambda p: (p["tokens"], p["path_id"])),
                  "default": min(correct, key=lambda p: (hashlib.md5(p["path_id"].encode()).hexdigest(), p["path_id"]))}
        for pairing, c in chosen.items():
            wrong = [p for p in ps if not p["correct"] and p["tree_id"] == c["tree_id"]]
            if not wrong:
                continue
            shared, _, _, w = min(((common_prefix_length(c["node_ids"], w["node_ids"]), w["tokens"], w["path_id"], w) for w in wrong),
                                  key=lambda s: s[:3])
            pairs.append({"pairing": pairing, "problem_id": pid, "tree_id": c["tree_id"],
                          "prompt": [{"role": "user", "content": prompt}],
                          "chosen": [{"role": "assistant", "content": c["path_text"]}],
                          "rejected": [{"role": "assistant", "content": w["path_text"]}],
                          "chosen_path_id": c["path_id"], "chosen_node_ids": c["node_ids"],
                          "rejected_path_id": w["path_id"], "rejected_node_ids": w["node_ids"],
                          "chosen_tokens": c["tokens"], "rejected_tokens": w["tokens"], "rejected_no_answer": w["no_answer"],
                          "common_prefix_nodes": shared - 1, "common_prefix_tokens": c["cum_tokens"][shared - 1],
                          "common_prefix_chars": c["cum_chars"][shared - 1]})
    sft.sort(key=lambda r: (r["problem_id"], r["path_id"]))
    pairs.sort(key=lambda r: (r["pairing"], r["problem_id"]))
    out = {"tree_paths": _frame(paths, PATH_SCHEMA), "sft_dataset": _frame(sft, SFT_SCHEMA),
           "preference_pairs": _frame(pairs, PAIR_SCHEMA)}
    for name, df in out.items():
        lake.write_table(name, df)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    args = ap.parse_args()
    nodes, staged = synthetic_nodes(args.nodes)
    lengths = nodes.select("node_id", pl.col("n_tokens").alias("student_tokens"))
    with tempfile.TemporaryDirectory() as sql_tmp, tempfile.TemporaryDirectory() as py_tmp:
        lake = Lake(sql_tmp)
        lake.write_table("search_trees", nodes, "synthetic-000")
        lake.write_table("node_lengths", lengths)
        lake.write_table("stg_problems", staged)
        models = load_models()
        start = time.perf_counter()
        runs = list(run_models(lake, models, ["tree_paths", "sft_dataset", "preference_pairs"], {"sft_selection": "longest"}))
        seconds = time.perf_counter() - start
        sql = {run.name: run.df for run in runs}
        start = time.perf_counter()
        ref = python_reference(lake, Lake(py_tmp))
        py_seconds = time.perf_counter() - start
    # whole tables, every column and row order: the SQL and the loops give the same files
    match = {name: sql[name].equals(ref[name]) for name in ref}
    print(json.dumps({
        "nodes": nodes.height, "trees": staged.height, "paths": sql["tree_paths"].height,
        "sft_rows": sql["sft_dataset"].height, "pairs": sql["preference_pairs"].height,
        "seconds": round(seconds, 2), "query_seconds": {run.name: round(run.seconds, 2) for run in runs},
        "python_seconds": round(py_seconds, 2),
        "speedup_vs_python": round(py_seconds / seconds, 2), "outputs_match": all(match.values()), "match_by_model": match,
    }, indent=2))
    return 0 if all(match.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
