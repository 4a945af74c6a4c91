"""The paper's Table 5 from eval_results: rows are ablation steps, cells accuracy (no-answer %)."""

from __future__ import annotations

import polars as pl

# (row label in the table, variant name in eval_results), in the paper's order.
TABLE_ROWS = [
    ("base", "base"), ("distill_baseline", "distill_baseline"), ("SFT", "sft"), ("+DPO", "dpo"),
    ("+balance", "balanced"), ("+cDPO", "cdpo"), ("+joint", "joint"), ("+mask", "joint_masked"),
]


def summarize_results(results: pl.DataFrame) -> pl.DataFrame:
    """One row per (variant, eval set): first-sample accuracy, no-answer rate, mean tokens, Test@N."""
    first = results.filter(pl.col("sample") == 0)
    stats = first.group_by("variant", "eval_set").agg(
        pl.len().alias("n"),
        pl.col("correct").mean().alias("accuracy"),
        pl.col("no_answer").mean().alias("no_answer_rate"),
        pl.col("n_tokens").mean().alias("mean_tokens"),
        pl.col("reflections").mean().alias("reflections_per_response"),
    )
    test_at_n = (results.group_by("variant", "eval_set", "problem_id").agg(pl.col("correct").any())
                 .group_by("variant", "eval_set").agg(pl.col("correct").mean().alias("test_at_n")))
    order = {v: i for i, (_, v) in enumerate(TABLE_ROWS)}
    return (stats.join(test_at_n, on=["variant", "eval_set"])
            .with_columns(pl.col("variant").replace_strict(order, default=len(order)).alias("_order"))
            .sort("_order", "eval_set").drop("_order"))


def markdown_table(summary: pl.DataFrame) -> str:
    sets = sorted(set(summary["eval_set"]))
    cell = {(r["variant"], r["eval_set"]): f"{100 * r['accuracy']:.1f} ({100 * r['no_answer_rate']:.1f})"
            for r in summary.iter_rows(named=True)}
    lines = ["| | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for label, variant in TABLE_ROWS:
        if any((variant, s) in cell for s in sets):
            lines.append(f"| {label} | " + " | ".join(cell.get((variant, s), "–") for s in sets) + " |")
    return "\n".join(lines) + "\n\nCells: accuracy % (no-answer %), first sample at the eval temperature."


def direction_notes(summary: pl.DataFrame) -> list[str]:
    """Where the rows go with or against the paper's direction, per eval set."""
    notes = []
    for (eval_set,), g in summary.group_by("eval_set", maintain_order=True):
        acc = dict(zip(g["variant"], g["accuracy"], strict=True))
        na = dict(zip(g["variant"], g["no_answer_rate"], strict=True))
        if "sft" in acc and "base" in acc:
            notes.append(f"{eval_set}: SFT on the trees {'beats' if acc['sft'] > acc['base'] else 'does not beat'} the base "
                         f"({100 * acc['sft']:.1f} vs {100 * acc['base']:.1f}); the paper reports a gain.")
        if "distill_baseline" in na and "sft" in na:
            longer = na["distill_baseline"] > na["sft"]
            notes.append(f"{eval_set}: the long-CoT distillation baseline has {'a higher' if longer else 'no higher'} no-answer "
                         f"rate than SFT on the trees ({100 * na['distill_baseline']:.1f}% vs {100 * na['sft']:.1f}%); "
                         "the paper reports that students inherit over-thinking.")
        if "joint_masked" in acc and "dpo" in acc:
            notes.append(f"{eval_set}: +mask vs +DPO accuracy {100 * acc['joint_masked']:.1f} vs {100 * acc['dpo']:.1f}, "
                         f"no-answer {100 * na['joint_masked']:.1f}% vs {100 * na['dpo']:.1f}%; the paper reports the full "
                         "method recovering what plain DPO loses.")
    return notes


def bar_chart_png(summary: pl.DataFrame) -> bytes:
    from widen_dag.reporting.plots import figure_png, pyplot

    plt = pyplot()
    sets = sorted(set(summary["eval_set"]))
    labels = [label for label, v in TABLE_ROWS if v in set(summary["variant"])]
    variants = [v for _, v in TABLE_ROWS if v in set(summary["variant"])]
    fig, axes = plt.subplots(1, len(sets), figsize=(max(6, 1.1 * len(labels)) * len(sets), 3.6), dpi=100, squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        g = {r["variant"]: r for r in summary.filter(pl.col("eval_set") == s).iter_rows(named=True)}
        xs = range(len(variants))
        ax.bar([x - 0.2 for x in xs], [100 * g[v]["accuracy"] if v in g else 0 for v in variants], 0.4, label="accuracy %")
        ax.bar([x + 0.2 for x in xs], [100 * g[v]["no_answer_rate"] if v in g else 0 for v in variants], 0.4, label="no-answer %")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_title(s)
        ax.legend()
    return figure_png(fig)
