"""The paper's Table 7 from the `mcts_decode` rows: sampled Test@k beside Test@k (MCTS).

Rows: each decoded checkpoint sampled, then the same checkpoint "+ MCTS decode"; columns:
Test@k per eval set. Sampled Test@k is the unbiased estimate from max(k) samples per problem;
MCTS Test@k is the share of problems whose first correct answer came within k rollouts.
"""

from __future__ import annotations

import polars as pl

from widen_dag.evaluate.report import TABLE_ROWS
from widen_dag.evaluate.stats import pass_at_k

DECODE_SCHEMA = {
    "variant": pl.String,
    "checkpoint": pl.String,
    "eval_set": pl.String,
    "problem_id": pl.String,
    "method": pl.String,
    "budget": pl.Int32,
    "attempts": pl.Int32,
    "n_correct": pl.Int32,
    "first_correct": pl.Int32,
    "nodes": pl.Int32,
}
_LABELS = {variant: label for label, variant in TABLE_ROWS}


def solved_within(row: dict, k: int) -> float:
    """One problem's chance of Test@k: a probability for sampling, 0/1 for MCTS."""
    if row["method"] == "mcts":
        return float(row["first_correct"] is not None and row["first_correct"] <= k)
    return pass_at_k(row["attempts"], row["n_correct"], k)


def summarize_decode(rows: pl.DataFrame, ks: list[int]) -> pl.DataFrame:
    """One row per (variant, method, eval set): n and Test@k for each k."""
    out = []
    for (variant, method, eval_set), g in rows.group_by("variant", "method", "eval_set", maintain_order=True):
        recs = g.to_dicts()
        entry = {"variant": variant, "method": method, "eval_set": eval_set, "n": len(recs)}
        for k in ks:
            entry[f"test_at_{k}"] = sum(solved_within(r, k) for r in recs) / len(recs)
        out.append(entry)
    return pl.DataFrame(out)


def markdown_table7(summary: pl.DataFrame, ks: list[int]) -> str:
    sets = sorted(set(summary["eval_set"]))
    head = [f"{s} Test@{k}" if len(sets) > 1 else f"Test@{k}" for s in sets for k in ks]
    lines = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    cells = {(r["variant"], r["method"], r["eval_set"]): r for r in summary.iter_rows(named=True)}
    for variant in dict.fromkeys(summary["variant"]):
        label = _LABELS.get(variant, variant)
        for method, suffix in (("sampled", ""), ("mcts", " + MCTS decode")):
            vals = [
                f"{100 * cells[(variant, method, s)][f'test_at_{k}']:.1f}" if (variant, method, s) in cells else "–"
                for s in sets
                for k in ks
            ]
            lines.append(f"| {label}{suffix} | " + " | ".join(vals) + " |")
    n = ", ".join(f"{s}: {int(summary.filter(pl.col('eval_set') == s)['n'].max())}" for s in sets)
    return "\n".join(lines) + (
        f"\n\nTest@k %: sampled = solved by any of k samples (unbiased estimate from {max(ks)}); "
        f"MCTS = solved within k rollouts of the search with the checkpoint as policy. Problems: {n}."
    )
