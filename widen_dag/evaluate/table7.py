"""The paper's Table 7 from the `mcts_decode` rows: sampled Test@k beside Test@k (MCTS).

Rows: each decoded checkpoint sampled, then the same checkpoint "+ MCTS decode"; columns:
Test@k per eval set. Sampled Test@k is the unbiased estimate from max(k) samples per problem;
MCTS Test@k is the share of problems whose first correct answer came within k rollouts.

``decode_diagnostics`` says why one method loses to the other: how the decode's rollouts ended
(correct, wrong, no answer) and which node types the token limit cut off, beside the sampled
responses' cut-off and no-answer rates.
"""

from __future__ import annotations

import polars as pl

from widen_dag.evaluate.report import TABLE_ROWS
from widen_dag.evaluate.stats import pass_at_k
from widen_dag.search.format_stats import generated_nodes, overall_ends

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


def decode_diagnostics(nodes: pl.DataFrame, sampled: list[dict]) -> dict:
    """Why a checkpoint's MCTS decode and its sampling differ on one eval set.

    ``nodes``: the decode trees' nodes; ``sampled``: ``sample_and_score`` rows. Rollouts are
    counted at their terminal nodes (merged identical siblings count once per sample): the
    share that ended correct, wrong, or without an answer, and where the no-answer ones ended
    (``no_answer_ends``: "node type: how it ended" -> share of the no-answer rollouts, e.g. a
    thought that wrote another node's tag, or ran into the per-node token limit). Per generated
    node type, the share cut off by the token limit (``cut_off_by_node_type``) and the share
    ended by a foreign tag (``foreign_tag_by_node_type``)."""
    generated = generated_nodes(nodes)
    weight = pl.col("samples").fill_null(1) if "samples" in nodes.columns else pl.lit(1)
    ends = generated.filter(pl.col("is_terminal").fill_null(False)).select(
        weight.alias("w"),
        (pl.col("reward").fill_null(0.0) > 0).alias("correct"),
        pl.col("no_answer").fill_null(False).alias("no_answer"),
        (pl.col("node_type") + ": " + pl.col("ended_by").fill_null("?").str.replace("_", " ")).alias("end"),
    )
    paths = int(ends["w"].sum()) if ends.height else 0

    def share(mask: pl.Expr) -> float:
        return round(float(ends.filter(mask)["w"].sum()) / paths, 4) if paths else 0.0

    missing = ends.filter(pl.col("no_answer"))
    n_missing = float(missing["w"].sum()) if missing.height else 0.0
    where = missing.group_by("end").agg(pl.col("w").sum()).sort(["w", "end"], descending=[True, False])
    by_type = (
        generated.group_by("node_type")
        .agg(
            (pl.col("ended_by") == "length").fill_null(False).mean().alias("length"),
            (pl.col("ended_by") == "foreign_tag").fill_null(False).mean().alias("foreign_tag"),
        )
        .sort("node_type")
    )
    n_sampled = len(sampled)
    return {
        "mcts_paths": paths,
        "mcts_correct_share": share(pl.col("correct")),
        "mcts_wrong_share": share(~pl.col("correct") & ~pl.col("no_answer")),
        "mcts_no_answer_share": share(pl.col("no_answer")),
        "no_answer_ends": {r["end"]: round(r["w"] / n_missing, 4) for r in where.iter_rows(named=True)},
        "mcts_nodes": generated.height,
        "mcts_cut_off_share": overall_ends(nodes)["cut_off_share"],
        "cut_off_by_node_type": {r["node_type"]: round(r["length"], 4) for r in by_type.iter_rows(named=True)},
        "foreign_tag_by_node_type": {r["node_type"]: round(r["foreign_tag"], 4) for r in by_type.iter_rows(named=True)},
        "sampled": n_sampled,
        "sampled_cut_off_rate": round(sum(bool(r.get("cut_off")) for r in sampled) / n_sampled, 4) if n_sampled else 0.0,
        "sampled_no_answer_rate": round(sum(bool(r["no_answer"]) for r in sampled) / n_sampled, 4) if n_sampled else 0.0,
    }


def markdown_diagnostics(diagnostics: dict[tuple[str, str], dict]) -> str:
    """One row per (checkpoint, eval set) of ``decode_diagnostics``, percentages."""

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def listed(shares: dict[str, float], top: int = 3) -> str:
        kept = [(k, v) for k, v in shares.items() if v > 0][:top]
        return ", ".join(f"{k} {pct(v)}" for k, v in kept) or "–"

    lines = [
        "| checkpoint | eval set | MCTS rollouts | correct % | wrong % | no answer % | no-answer rollouts ended at (%) "
        "| token limit by node type % | foreign tag by node type % | sampled | sampled no answer % | sampled cut off % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, eval_set), d in diagnostics.items():
        lines.append(
            f"| {_LABELS.get(variant, variant)} | {eval_set} | {d['mcts_paths']} | {pct(d['mcts_correct_share'])} "
            f"| {pct(d['mcts_wrong_share'])} | {pct(d['mcts_no_answer_share'])} | {listed(d['no_answer_ends'])} "
            f"| {listed(d['cut_off_by_node_type'], 9)} | {listed(d['foreign_tag_by_node_type'], 9)} "
            f"| {d['sampled']} | {pct(d['sampled_no_answer_rate'])} | {pct(d['sampled_cut_off_rate'])} |"
        )
    return "\n".join(lines) + (
        "\n\nMCTS rollouts are counted at the node where each ended. A node hits the token limit at "
        "generation.max_tokens_per_node, a sampled response at eval.max_new_tokens; a foreign tag is a thought "
        "that wrote another node type's tag (the search ends it there)."
    )
