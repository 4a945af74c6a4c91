"""Trees -> paths -> length balance -> preference pairs on 1,000,000 synthetic nodes.

    .venv/bin/python bench/datasets.py [--nodes 1000000]

Runs the SQL models (tree_paths, sft_dataset, preference_pairs) over DuckDB, and a plain-
Python implementation of the same rules on the same node table, and prints JSON with
`nodes`, `seconds` (SQL), `python_seconds`, `speedup_vs_python` and `outputs_match`.
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

from widen_dag.lake import Lake
from widen_dag.search.store import NODE_SCHEMA
from widen_dag.sqlmodels import load_models, run_models

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
        cols_row = [tree, pid, f"{tree}/0", None, 0, "root", "", "", 0, 1, 0.0, False, None, None, False, "stop"]
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
                       leaf, reward, None, no_answer, "stop"]
                for k, v in zip(NODE_SCHEMA, row, strict=True):
                    cols[k].append(v)
                if not leaf:
                    frontier.append((node_id, depth + 1))
        t += 1
    nodes = pl.DataFrame(cols, schema=NODE_SCHEMA)
    staged = pl.DataFrame({"problem_id": problems, "domain": "arithmetic", "split": "train",
                           "prompt": [f"Solve {p}" for p in problems]})
    return nodes, staged


def python_reference(nodes: pl.DataFrame, staged: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The same rules as the SQL models, in plain Python loops."""
    by_id = {r["node_id"]: r for r in nodes.iter_rows(named=True)}
    prompt = dict(zip(staged["problem_id"], staged["prompt"], strict=True))
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
            cum_t.append(cum_t[-1] + n["n_tokens"])
            cum_c.append(cum_c[-1] + len(n["text"]))
        paths.append({"problem_id": r["problem_id"], "path_id": r["node_id"], "node_ids": [n["node_id"] for n in chain],
                      "path_text": "".join(n["text"] for n in chain),
                      "correct": r["node_type"] == "answer" and r["reward"] == 1.0, "no_answer": bool(r["no_answer"]),
                      "tokens": cum_t[-1], "chars": cum_c[-1], "cum_tokens": cum_t, "cum_chars": cum_c})
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for p in paths:
        by_problem[p["problem_id"]].append(p)
    sft, pairs = [], []
    for pid, ps in by_problem.items():
        correct = [p for p in ps if p["correct"]]
        wrong = [p for p in ps if not p["correct"]]
        if not correct:
            continue
        longest = min(correct, key=lambda p: (-p["tokens"], p["path_id"]))
        sft.append({"problem_id": pid, "path_id": longest["path_id"], "tokens": longest["tokens"]})
        chosen = {"balanced": min(correct, key=lambda p: (p["tokens"], p["path_id"])),
                  "default": min(correct, key=lambda p: (hashlib.md5(p["path_id"].encode()).hexdigest(), p["path_id"]))}
        for pairing, c in chosen.items():
            if not wrong:
                continue
            ids = set(c["node_ids"])
            scored = [(sum(1 for i in w["node_ids"] if i in ids), w["tokens"], w["path_id"], w) for w in wrong]
            shared, _, _, w = min(scored, key=lambda s: s[:3])
            pairs.append({"pairing": pairing, "problem_id": pid, "chosen_path_id": c["path_id"], "rejected_path_id": w["path_id"],
                          "common_prefix_tokens": c["cum_tokens"][shared - 1], "common_prefix_chars": c["cum_chars"][shared - 1],
                          "prompt_text": prompt[pid]})
    return {"tree_paths": pl.DataFrame(paths), "sft_dataset": pl.DataFrame(sft), "preference_pairs": pl.DataFrame(pairs)}


def _canon(name: str, df: pl.DataFrame) -> pl.DataFrame:
    if name == "tree_paths":
        cols = ["path_id", "problem_id", "node_ids", "path_text", "correct", "no_answer", "tokens", "chars"]
        return df.select(cols).with_columns(pl.col("tokens", "chars").cast(pl.Int64)).sort("path_id")
    if name == "sft_dataset":
        return df.select("problem_id", "path_id", pl.col("tokens").cast(pl.Int64)).sort("problem_id")
    cols = ["pairing", "problem_id", "chosen_path_id", "rejected_path_id", "common_prefix_tokens", "common_prefix_chars"]
    return df.select(cols).with_columns(pl.col("common_prefix_tokens", "common_prefix_chars").cast(pl.Int64)).sort("pairing", "problem_id")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    args = ap.parse_args()
    nodes, staged = synthetic_nodes(args.nodes)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        lake.write_table("search_trees", nodes, "synthetic-000")
        lake.write_table("node_lengths", nodes.select("node_id", pl.col("n_tokens").alias("student_tokens")))
        lake.write_table("stg_problems", staged)
        models = load_models()
        start = time.perf_counter()
        sql = {name: df for name, df, _ in run_models(lake, models, ["tree_paths", "sft_dataset", "preference_pairs"],
                                                       {"sft_selection": "longest"})}
        seconds = time.perf_counter() - start
    start = time.perf_counter()
    ref = python_reference(nodes, staged)
    py_seconds = time.perf_counter() - start
    match = {name: _canon(name, sql[name]).equals(_canon(name, ref[name])) for name in ref}
    print(json.dumps({
        "nodes": nodes.height, "trees": staged.height, "paths": sql["tree_paths"].height,
        "sft_rows": sql["sft_dataset"].height, "pairs": sql["preference_pairs"].height,
        "seconds": round(seconds, 2), "python_seconds": round(py_seconds, 2),
        "speedup_vs_python": round(py_seconds / seconds, 2), "outputs_match": all(match.values()), "match_by_model": match,
    }, indent=2))
    return 0 if all(match.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
