"""The paper's Table 5 from eval_results, with the uncertainty a reviewer needs.

Per cell (checkpoint x eval set): sampled accuracy (the mean over a problem's samples, i.e.
unbiased Test@1) and no-answer rate with 95% bootstrap intervals over problems, greedy
accuracy with a Wilson interval, unbiased Test@k, token counts and reflections. Rows are
compared on the same problems (paired bootstrap; McNemar for greedy) with the previous row,
with SFT and with plain DPO; a paper direction is "supported" only when its paired interval
excludes zero.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
import polars as pl

from widen_dag.evaluate import stats

# (row label in the table, variant name in eval_results), in the paper's order.
TABLE_ROWS = [
    ("base", "base"),
    ("distill_baseline", "distill_baseline"),
    ("SFT", "sft"),
    ("+DPO", "dpo"),
    ("+balance", "balanced"),
    ("+cDPO", "cdpo"),
    ("+joint", "joint"),
    ("+mask", "joint_masked"),
]
LABELS = {v: label for label, v in TABLE_ROWS}
# The row each row is compared with ("vs the previous row"): SFT and the distillation
# baseline both start from the base; each DPO row adds one technique to the row above.
PREVIOUS = {
    "distill_baseline": "base",
    "sft": "base",
    "dpo": "sft",
    "balanced": "dpo",
    "cdpo": "balanced",
    "joint": "cdpo",
    "joint_masked": "joint",
}
REFERENCES = ("prev", "sft", "dpo")  # paired-comparison column groups: vs previous row, vs SFT, vs +DPO


@dataclass(frozen=True)
class Direction:
    """One way the paper's Table 5 moves: ``variant`` minus ``reference`` on ``metric`` has
    sign ``sign``. ``ref`` names the summary's comparison columns (prev, sft or dpo)."""

    variant: str
    ref: str
    metric: str  # "acc" (sampled accuracy) or "no_answer"
    sign: int
    claim: str

    def reference(self) -> str:
        return PREVIOUS[self.variant] if self.ref == "prev" else self.ref


DIRECTIONS = [
    Direction("sft", "prev", "acc", +1, "SFT on the trees beats the student base"),
    Direction("distill_baseline", "sft", "acc", -1, "long-CoT distillation is less accurate than SFT on the trees"),
    Direction("distill_baseline", "sft", "no_answer", +1, "long-CoT distillation leaves more no-answers than SFT on the trees"),
    Direction("dpo", "prev", "acc", -1, "plain DPO loses accuracy against SFT"),
    Direction("dpo", "prev", "no_answer", +1, "plain DPO raises the no-answer rate against SFT"),
    Direction("balanced", "prev", "acc", -1, "length-balanced pairs lose more accuracy than plain DPO"),
    Direction("balanced", "prev", "no_answer", +1, "length-balanced pairs raise the no-answer rate further"),
    Direction("cdpo", "prev", "acc", +1, "cDPO recovers accuracy over +balance"),
    Direction("cdpo", "prev", "no_answer", -1, "cDPO lowers the no-answer rate over +balance"),
    Direction("joint", "prev", "no_answer", -1, "the joint SFT term lowers the no-answer rate over cDPO"),
    Direction("joint_masked", "prev", "acc", +1, "prefix masking raises accuracy over +joint"),
    Direction("joint_masked", "prev", "no_answer", -1, "prefix masking lowers the no-answer rate over +joint"),
    Direction("joint_masked", "dpo", "acc", +1, "the full method recovers the accuracy plain DPO loses"),
    Direction("joint_masked", "dpo", "no_answer", -1, "the full method recovers the no-answers plain DPO adds"),
]


def test_at_ks(n: int) -> list[int]:
    """The k of the Test@k columns: powers of two up to n, and n itself."""
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    return ks if n in ks else [*ks, n]


def per_problem(results: pl.DataFrame) -> pl.DataFrame:
    """One row per (variant, eval set, problem): samples, correct samples, no-answer share,
    and the greedy verdicts (null where no greedy response was generated)."""
    if "decoding" not in results.columns:  # eval_results written before greedy decoding existed
        results = results.with_columns(pl.lit("sampled").alias("decoding"))
    keys = ["variant", "eval_set", "problem_id"]
    sampled = (
        results.filter(pl.col("decoding") == "sampled")
        .group_by(keys)
        .agg(pl.len().alias("samples"), pl.col("correct").sum().alias("correct"), pl.col("no_answer").mean().alias("no_answer"))
    )
    greedy = (
        results.filter(pl.col("decoding") == "greedy")
        .group_by(keys)
        .agg(pl.col("correct").first().alias("greedy_correct"), pl.col("no_answer").first().alias("greedy_no_answer"))
    )
    return sampled.join(greedy, on=keys, how="left").sort(keys)


def _cell(pp: pl.DataFrame, resp: pl.DataFrame, ks: list[int]) -> dict:
    n = pp.height
    acc = (pp["correct"] / pp["samples"]).to_numpy()
    na = pp["no_answer"].to_numpy()
    out: dict = {"n": n, "samples_per_problem": int(pp["samples"].min())}
    out["accuracy"] = float(acc.mean())
    out["accuracy_lo"], out["accuracy_hi"] = stats.bootstrap_interval(acc)
    out["no_answer_rate"] = float(na.mean())
    out["no_answer_lo"], out["no_answer_hi"] = stats.bootstrap_interval(na)
    g = pp.filter(pl.col("greedy_correct").is_not_null())
    if g.height:
        gc, gna = int(g["greedy_correct"].sum()), int(g["greedy_no_answer"].sum())
        out["greedy_accuracy"] = gc / g.height
        out["greedy_accuracy_lo"], out["greedy_accuracy_hi"] = stats.wilson_interval(gc, g.height)
        out["greedy_no_answer_rate"] = gna / g.height
        out["greedy_no_answer_lo"], out["greedy_no_answer_hi"] = stats.wilson_interval(gna, g.height)
    for k in ks:
        per = (
            np.array([stats.pass_at_k(s, c, k) for s, c in zip(pp["samples"], pp["correct"], strict=True)])
            if k <= out["samples_per_problem"]
            else np.array([math.nan])
        )
        out[f"test_at_{k}"] = float(per.mean())
        out[f"test_at_{k}_lo"], out[f"test_at_{k}_hi"] = (
            stats.bootstrap_interval(per) if not math.isnan(per[0]) else (math.nan, math.nan)
        )
    out["test_at_n"] = float((pp["correct"] > 0).mean())  # solved by any of the samples
    tokens = resp["n_tokens"]
    out["mean_tokens"] = float(tokens.mean())
    out["median_tokens"] = float(tokens.median())
    out["reflections_per_response"] = float(resp["reflections"].mean())
    return out


def _paired(a: pl.DataFrame, b: pl.DataFrame, ref: str) -> dict:
    """a minus b on the problems both answered: sampled accuracy and no-answer (paired
    bootstrap), greedy accuracy (paired bootstrap and exact McNemar)."""
    j = a.join(b, on="problem_id", suffix="_ref")
    out: dict = {}
    acc, acc_ref = (j["correct"] / j["samples"]).to_numpy(), (j["correct_ref"] / j["samples_ref"]).to_numpy()
    d = stats.paired_difference(acc, acc_ref)
    out[f"acc_diff_vs_{ref}"], out[f"acc_diff_vs_{ref}_lo"], out[f"acc_diff_vs_{ref}_hi"] = d
    d = stats.paired_difference(j["no_answer"].to_numpy(), j["no_answer_ref"].to_numpy())
    out[f"no_answer_diff_vs_{ref}"], out[f"no_answer_diff_vs_{ref}_lo"], out[f"no_answer_diff_vs_{ref}_hi"] = d
    g = j.filter(pl.col("greedy_correct").is_not_null() & pl.col("greedy_correct_ref").is_not_null())
    if g.height:
        x, y = g["greedy_correct"].to_numpy(), g["greedy_correct_ref"].to_numpy()
        d = stats.paired_difference(x.astype(float), y.astype(float))
        out[f"greedy_diff_vs_{ref}"], out[f"greedy_diff_vs_{ref}_lo"], out[f"greedy_diff_vs_{ref}_hi"] = d
        out[f"greedy_mcnemar_p_vs_{ref}"] = stats.mcnemar_p(x, y)
    return out


def _present_previous(variant: str, eval_set: str, groups: dict) -> str | None:
    """The row this row is compared with: the nearest row above it in the paper's chain that
    was evaluated (a profile without +joint compares +mask with +cDPO)."""
    previous = PREVIOUS.get(variant)
    while previous is not None and (previous, eval_set) not in groups:
        previous = PREVIOUS.get(previous)
    return previous


def summarize_results(results: pl.DataFrame) -> pl.DataFrame:
    """One row per (variant, eval set) in the table's order: every figure of the cell with its
    95% interval, and the paired differences against the previous row, SFT and +DPO."""
    pp = per_problem(results)
    if "decoding" in results.columns:
        results = results.filter(pl.col("decoding") == "sampled")
    max_n = int(pp["samples"].min()) if pp.height else 1
    ks = test_at_ks(max_n)
    order = {v: i for i, (_, v) in enumerate(TABLE_ROWS)}
    cells = sorted(
        {(v, s) for v, s in zip(pp["variant"], pp["eval_set"], strict=True)}, key=lambda vs: (order.get(vs[0], len(order)), vs[1])
    )
    groups = {key: g for key, g in pp.group_by("variant", "eval_set")}
    responses = {key: g for key, g in results.group_by("variant", "eval_set")}
    rows = []
    for variant, eval_set in cells:
        previous = _present_previous(variant, eval_set, groups)
        row = {"variant": variant, "eval_set": eval_set, "prev_variant": previous}
        row |= _cell(groups[(variant, eval_set)], responses[(variant, eval_set)], ks)
        for ref in REFERENCES:
            other = previous if ref == "prev" else ref
            if other and other != variant and (other, eval_set) in groups:
                row |= _paired(groups[(variant, eval_set)], groups[(other, eval_set)], ref)
        rows.append(row)
    schema = {
        "variant": pl.String,
        "eval_set": pl.String,
        "prev_variant": pl.String,
        "n": pl.Int64,
        "samples_per_problem": pl.Int64,
    }
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return pl.DataFrame([{c: r.get(c) for c in columns} for r in rows], schema={c: schema.get(c, pl.Float64) for c in columns})


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _ci(r: dict, col: str, lo: str, hi: str) -> str:
    if r.get(col) is None:
        return "–"
    return f"{_pct(r[col])} [{_pct(r.get(lo))}, {_pct(r.get(hi))}]"


def _diff(r: dict, key: str) -> str:
    if r.get(key) is None:
        return ""
    return f"{100 * r[key]:+.1f} [{100 * r[key + '_lo']:+.1f}, {100 * r[key + '_hi']:+.1f}]"


def markdown_table(summary: pl.DataFrame) -> str:
    """One table per eval set: the cells with their 95% intervals, and each row's paired
    accuracy difference to the row it is compared with; a greedy column where greedy responses
    were generated (``eval.greedy``)."""
    out = []
    greedy = "greedy_accuracy" in summary.columns and summary["greedy_accuracy"].is_not_null().any()
    top_k = max(
        (
            int(c.removeprefix("test_at_"))
            for c in summary.columns
            if c.startswith("test_at_") and c.removeprefix("test_at_").isdigit()
        ),
        default=None,
    )
    for (eval_set,), g in summary.group_by("eval_set", maintain_order=True):
        first = g.row(0, named=True)
        each = f"{first['samples_per_problem']} samples each" + (" + greedy" if greedy else "")
        out.append(f"**{eval_set}**: {first['n']} problems, {each}\n")
        tk = f"Test@{top_k} %" if top_k else "Test@N %"
        greedy_head = " greedy % |" if greedy else ""
        out.append(f"| row | accuracy % | no-answer % |{greedy_head} {tk} | tokens (mean / median) | Δ accuracy vs row above |")
        out.append("|---|---|---|---|---|---|" + ("---|" if greedy else ""))
        by_variant = {r["variant"]: r for r in g.iter_rows(named=True)}
        for label, variant in TABLE_ROWS:
            r = by_variant.get(variant)
            if r is None:
                continue
            test = _pct(r.get(f"test_at_{top_k}")) if top_k else _pct(r.get("test_at_n"))
            prev = (
                f"{_diff(r, 'acc_diff_vs_prev')} vs {LABELS.get(r['prev_variant'], r['prev_variant'])}"
                if r.get("acc_diff_vs_prev") is not None
                else ""
            )
            greedy_cell = f" {_pct(r.get('greedy_accuracy'))} |" if greedy else ""
            out.append(
                f"| {label} | {_ci(r, 'accuracy', 'accuracy_lo', 'accuracy_hi')} | "
                f"{_ci(r, 'no_answer_rate', 'no_answer_lo', 'no_answer_hi')} |{greedy_cell} "
                f"{test} | {r['mean_tokens']:.0f} / {r['median_tokens']:.0f} | {prev} |"
            )
        out.append("")
    return "\n".join(out) + (
        "\nCells: % with 95% intervals in brackets (bootstrap over problems); accuracy and "
        "no-answer are the mean over each problem's samples at the eval temperature; Δ is a "
        "paired difference on the same problems (points). On instruction-following eval sets a "
        "response is correct when its answer block follows every constraint under IFEval's loose "
        "rule (loose prompt-level accuracy); no answer block is a no-answer unless the set sets "
        "answer_fallback (then the whole response is scored; on math sets, its last number)."
    )


def direction_table(summary: pl.DataFrame) -> list[dict]:
    """Each paper direction per eval set: the paired difference, its interval and the verdict
    (supported / within noise / contradicted)."""
    out = []
    for (eval_set,), g in summary.group_by("eval_set", maintain_order=True):
        by_variant = {r["variant"]: r for r in g.iter_rows(named=True)}
        for d in DIRECTIONS:
            r = by_variant.get(d.variant)
            col = f"{d.metric}_diff_vs_{d.ref}"
            if r is None or r.get(col) is None:
                continue
            if d.ref == "prev" and r.get("prev_variant") != d.reference():
                continue  # the row above is another one than the claim's (a variant left out)
            diff, lo, hi = r[col], r[col + "_lo"], r[col + "_hi"]
            out.append(
                {
                    "eval_set": eval_set,
                    "variant": d.variant,
                    "reference": d.reference(),
                    "metric": d.metric,
                    "expected": "up" if d.sign > 0 else "down",
                    "claim": d.claim,
                    "diff": diff,
                    "lo": lo,
                    "hi": hi,
                    "held": diff * d.sign > 0,
                    "verdict": stats.verdict(lo, hi, d.sign),
                }
            )
    return out


def direction_notes(summary: pl.DataFrame) -> list[str]:
    """The paper's directions in words: 'supported' only when the paired 95% interval excludes
    zero, 'within noise' when it contains zero, 'contradicted' when it excludes zero the other way."""
    metric = {"acc": "accuracy", "no_answer": "no-answer"}
    return [
        f"{d['eval_set']}: {d['claim']}: {d['verdict']} ({LABELS.get(d['variant'], d['variant'])} - "
        f"{LABELS.get(d['reference'], d['reference'])} {metric[d['metric']]} {100 * d['diff']:+.1f} points, "
        f"95% CI [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}])"
        for d in direction_table(summary)
    ]


SEED_METRICS = ("accuracy", "no_answer_rate", "greedy_accuracy", "test_at_n", "mean_tokens")


def seed_summary(reports: dict[int, pl.DataFrame]) -> dict:
    """Across seeds (one ablation_report each): per cell mean and sd of each figure, and per
    paper direction how often it held (point estimate in the paper's direction) and how
    often it was supported (paired interval excluding zero that way)."""
    cells: dict[str, dict[str, dict]] = {}
    for _, summary in sorted(reports.items()):
        for r in summary.iter_rows(named=True):
            cell = cells.setdefault(r["eval_set"], {}).setdefault(r["variant"], {m: [] for m in SEED_METRICS})
            for m in SEED_METRICS:
                if r.get(m) is not None:
                    cell[m].append(r[m])
    out_cells = {
        eval_set: {
            LABELS.get(v, v): {
                m: {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}
                for m, xs in metrics.items()
                if xs
            }
            for v, metrics in sorted(
                variants.items(), key=lambda kv: [v for _, v in TABLE_ROWS].index(kv[0]) if kv[0] in LABELS else len(TABLE_ROWS)
            )
        }
        for eval_set, variants in cells.items()
    }
    per_direction: dict[tuple, list[dict]] = {}
    for _, summary in sorted(reports.items()):
        for d in direction_table(summary):
            per_direction.setdefault((d["eval_set"], d["variant"], d["reference"], d["metric"], d["claim"]), []).append(d)
    directions = []
    for (eval_set, variant, reference, metric, claim), ds in per_direction.items():
        directions.append(
            {
                "eval_set": eval_set,
                "claim": claim,
                "row": LABELS.get(variant, variant),
                "vs": LABELS.get(reference, reference),
                "metric": metric,
                "expected": ds[0]["expected"],
                "seeds": len(ds),
                "held": sum(d["held"] for d in ds) / len(ds),
                "supported": sum(d["verdict"] == "supported" for d in ds) / len(ds),
                "contradicted": sum(d["verdict"] == "contradicted" for d in ds) / len(ds),
                "diff_mean": statistics.fmean(d["diff"] for d in ds),
                "diff_sd": statistics.stdev([d["diff"] for d in ds]) if len(ds) > 1 else 0.0,
            }
        )
    return {"seeds": sorted(reports), "cells": out_cells, "directions": directions}


def pooled_summary(results_by_seed: dict[int, pl.DataFrame]) -> pl.DataFrame:
    """The ablation over seeds as one ``summarize_results`` table: the seeds answer the same
    held-out problems, so every seed's sampled responses to a problem are pooled and a
    problem's score is its mean over seeds and samples. Each cell's interval and each paired
    difference are then bootstrapped over problems, as in one seed, on K times the samples.
    The spread between seeds (one trained checkpoint each) is not in these intervals: the
    per-seed sd and the per-seed verdicts of ``seed_summary`` show it. Greedy responses (one
    per problem and seed) are left out, and Test@k mixes seeds' checkpoints, so neither is read
    from this table. Only the cells every seed evaluated are pooled, so a paired difference
    always compares means over the same seeds."""
    frames = []
    for seed, results in sorted(results_by_seed.items()):
        if "decoding" in results.columns:
            results = results.filter(pl.col("decoding") == "sampled")
        frames.append(results.with_columns(pl.lit(seed).alias("seed")))
    if not frames:
        raise ValueError("no seeds to pool")
    every = set.intersection(*({(v, s) for v, s in zip(f["variant"], f["eval_set"], strict=True)} for f in frames))
    if not every:
        raise ValueError("no (variant, eval set) cell was evaluated in every seed")
    pooled = pl.concat(frames, how="diagonal_relaxed")
    keep = pl.DataFrame(sorted(every), schema={"variant": pl.String, "eval_set": pl.String}, orient="row")
    return summarize_results(pooled.join(keep, on=["variant", "eval_set"]))


def pooled_markdown(pooled: pl.DataFrame, seeds: int) -> str:
    """The pooled table (rows by eval set: accuracy / no-answer % with 95% intervals) and each
    paper direction's pooled paired difference with its verdict."""
    sets = list(dict.fromkeys(pooled["eval_set"]))
    cells = {(r["variant"], r["eval_set"]): r for r in pooled.iter_rows(named=True)}
    head = [f"{s} ({max(r['n'] for (_, s2), r in cells.items() if s2 == s)})" for s in sets]
    lines = [
        f"Accuracy / no-answer %, {seeds} seeds pooled per problem (95% intervals over problems):\n",
        "| row | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for label, variant in TABLE_ROWS:
        if not any((variant, s) in cells for s in sets):
            continue
        row = []
        for s in sets:
            r = cells.get((variant, s))
            row.append(
                "–"
                if r is None
                else f"{_ci(r, 'accuracy', 'accuracy_lo', 'accuracy_hi')} / {_ci(r, 'no_answer_rate', 'no_answer_lo', 'no_answer_hi')}"
            )
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += ["", "Paper directions, pooled paired differences:", ""]
    lines += [f"- {note}" for note in direction_notes(pooled)]
    return "\n".join(lines) + "\n"


def seed_markdown(summary: dict) -> str:
    """The multi-seed summary as Markdown: cells mean ± sd (a greedy column where the seeds
    decoded greedily), then each direction's shares."""
    lines = []
    for eval_set, rows in summary["cells"].items():
        keys = ["accuracy", "no_answer_rate", "greedy_accuracy", "test_at_n"]
        names = ["accuracy", "no-answer", "greedy", "Test@N"]
        if not any("greedy_accuracy" in m for m in rows.values()):
            del keys[2], names[2]
        lines += [
            f"**{eval_set}**, {len(summary['seeds'])} seeds (mean ± sd, %)\n",
            "| row | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for label, m in rows.items():
            cell = [f"{100 * m[k]['mean']:.1f} ± {100 * m[k]['sd']:.1f}" if k in m else "–" for k in keys]
            lines.append(f"| {label} | " + " | ".join(cell) + " |")
        lines += ["", "| paper direction | held | supported (CI excludes 0) | mean Δ ± sd (points) |", "|---|---|---|---|"]
        for d in summary["directions"]:
            if d["eval_set"] == eval_set:
                n = d["seeds"]
                lines.append(
                    f"| {d['claim']} | {round(d['held'] * n)}/{n} | {round(d['supported'] * n)}/{n} | "
                    f"{100 * d['diff_mean']:+.1f} ± {100 * d['diff_sd']:.1f} |"
                )
        lines.append("")
    return "\n".join(lines)


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
        for offset, col, lo, hi, name in (
            (-0.2, "accuracy", "accuracy_lo", "accuracy_hi", "accuracy %"),
            (0.2, "no_answer_rate", "no_answer_lo", "no_answer_hi", "no-answer %"),
        ):
            vals = [100 * g[v][col] if v in g else 0 for v in variants]
            # error bars are the 95% intervals (absent in reports from before they existed)
            err = [
                [
                    max(0.0, 100 * (g[v][col] - (g[v].get(lo) if g[v].get(lo) is not None else g[v][col]))) if v in g else 0
                    for v in variants
                ],
                [
                    max(0.0, 100 * ((g[v].get(hi) if g[v].get(hi) is not None else g[v][col]) - g[v][col])) if v in g else 0
                    for v in variants
                ],
            ]
            ax.bar([x + offset for x in xs], vals, 0.4, yerr=err, capsize=2, label=name)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_title(s)
        ax.legend()
    return figure_png(fig)
