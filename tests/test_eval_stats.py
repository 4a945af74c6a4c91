"""The statistics of the ablation report against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from widen_dag.evaluate import stats
from widen_dag.evaluate.report import direction_notes, direction_table, seed_summary, summarize_results


def test_wilson_interval_matches_hand_computed_values():
    # 8/10: centre (0.8 + z^2/20) / (1 + z^2/10), half z*sqrt(0.016 + z^2/400) / (1 + z^2/10)
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-5) and hi == pytest.approx(0.94332, abs=1e-5)
    # 0/10 stays inside [0, 1] and is not degenerate: upper z^2/(10 + z^2)
    assert stats.wilson_interval(0, 10) == (0.0, pytest.approx(3.8415 / 13.8415, abs=1e-4))
    assert stats.wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)


def test_pass_at_k_is_the_unbiased_estimator():
    assert stats.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert stats.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert stats.pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))
    assert stats.pass_at_k(4, 3, 2) == 1.0  # fewer wrong samples than k: every k-subset holds a correct one
    assert stats.pass_at_k(10, 0, 5) == 0.0
    assert stats.pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # Test@1 is the share correct
    with pytest.raises(ValueError):
        stats.pass_at_k(2, 1, 3)


def test_mcnemar_counts_only_discordant_problems():
    # 5 problems right only under a, none only under b: two-sided 2 * (1/2)^5
    a = [True] * 5 + [True, False] * 10
    b = [False] * 5 + [True, False] * 10
    assert stats.mcnemar_p(a, b) == pytest.approx(2 / 32)
    # 3 vs 1 discordant: 2 * (C(4,0) + C(4,1)) / 16
    assert stats.mcnemar_p([1, 1, 1, 0], [0, 0, 0, 1]) == pytest.approx(10 / 16)
    assert stats.mcnemar_p([1, 0], [1, 0]) == 1.0


def test_bootstrap_interval_of_a_proportion_is_near_wilson_and_exact_for_constants():
    values = np.array([1.0] * 300 + [0.0] * 700)
    lo, hi = stats.bootstrap_interval(values, seed=1)
    wlo, whi = stats.wilson_interval(300, 1000)
    assert abs(lo - wlo) < 0.01 and abs(hi - whi) < 0.01
    assert stats.bootstrap_interval([0.25] * 50) == (0.25, 0.25)
    assert stats.bootstrap_interval(values, seed=3) == stats.bootstrap_interval(values, seed=3)  # seeded


def test_paired_difference_cancels_what_both_rows_share():
    rng = np.random.default_rng(0)
    difficulty = rng.random(2000)
    b = (difficulty > 0.5).astype(float)
    a = b.copy()
    a[:60] = 1.0  # a solves 60 more problems of the first 60 (some already solved)
    diff, lo, hi = stats.paired_difference(a, b)
    assert diff == pytest.approx((a - b).mean())
    assert lo > 0  # paired: the gain is clear
    unpaired_half = 1.96 * math.sqrt(a.var() / 2000 + b.var() / 2000)
    assert (hi - lo) / 2 < unpaired_half / 3  # far narrower than two independent intervals
    assert stats.paired_difference([1, 0, 1], [1, 0, 1]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        stats.paired_difference([1, 0], [1])


def test_verdict_needs_the_interval_to_exclude_zero():
    assert stats.verdict(0.01, 0.05, +1) == "supported"
    assert stats.verdict(-0.05, -0.01, -1) == "supported"
    assert stats.verdict(-0.01, 0.05, +1) == "within noise"
    assert stats.verdict(0.01, 0.05, -1) == "contradicted"


def _results(variant: str, correct: list[bool], no_answer: list[bool], samples: int = 2, greedy: list[bool] | None = None):
    rows = []
    for i, (c, na) in enumerate(zip(correct, no_answer, strict=True)):
        for k in range(samples):
            rows.append(
                {
                    "variant": variant,
                    "eval_set": "arith",
                    "problem_id": f"p{i}",
                    "sample": k,
                    "decoding": "sampled",
                    "correct": c,
                    "no_answer": na,
                    "n_tokens": 10 + k,
                    "reflections": 0,
                }
            )
        rows.append(
            {
                "variant": variant,
                "eval_set": "arith",
                "problem_id": f"p{i}",
                "sample": 0,
                "decoding": "greedy",
                "correct": (greedy or correct)[i],
                "no_answer": na,
                "n_tokens": 10,
                "reflections": 0,
            }
        )
    return rows


def test_report_keeps_intervals_and_paired_differences_and_says_supported_only_outside_noise():
    n = 400
    base = [i % 4 == 0 for i in range(n)]  # 25%
    sft = [i % 4 == 0 or i % 4 == 1 for i in range(n)]  # 50%: a 25-point paired gain
    dpo = [c if i != 1 else not c for i, c in enumerate(sft)]  # one problem changes: noise
    results = pl.DataFrame(
        _results("base", base, [False] * n)
        + _results("sft", sft, [False] * n)
        + _results("dpo", dpo, [i % 50 == 0 for i in range(n)])
    )
    summary = summarize_results(results)
    for col in (
        "accuracy_lo",
        "accuracy_hi",
        "no_answer_lo",
        "no_answer_hi",
        "greedy_accuracy",
        "greedy_accuracy_lo",
        "greedy_accuracy_hi",
        "test_at_1",
        "test_at_2",
        "test_at_2_lo",
        "median_tokens",
        "reflections_per_response",
        "acc_diff_vs_prev",
        "acc_diff_vs_prev_lo",
        "acc_diff_vs_prev_hi",
        "no_answer_diff_vs_sft_lo",
        "greedy_mcnemar_p_vs_prev",
    ):
        assert col in summary.columns, col
    s = {r["variant"]: r for r in summary.iter_rows(named=True)}
    assert s["sft"]["accuracy_lo"] < 0.5 < s["sft"]["accuracy_hi"]
    assert s["sft"]["greedy_accuracy_lo"] == pytest.approx(stats.wilson_interval(200, 400)[0])
    assert s["sft"]["acc_diff_vs_prev"] == pytest.approx(0.25) and s["sft"]["acc_diff_vs_prev_lo"] > 0.2
    assert s["sft"]["greedy_mcnemar_p_vs_prev"] < 1e-6
    assert s["sft"]["median_tokens"] == 10.5
    verdicts = {(d["variant"], d["metric"]): d["verdict"] for d in direction_table(summary)}
    assert verdicts[("sft", "acc")] == "supported"
    assert verdicts[("dpo", "acc")] == "within noise"  # -0.25 points on one problem
    assert verdicts[("dpo", "no_answer")] == "supported"  # 8 of 400 problems, all one way
    notes = direction_notes(summary)
    assert any(n.startswith("arith: SFT on the trees beats the student base: supported") for n in notes)
    assert any("plain DPO loses accuracy against SFT: within noise" in n for n in notes)


def test_seed_summary_gives_mean_sd_and_how_often_each_direction_held():
    n = 200
    base = [i % 4 == 0 for i in range(n)]
    reports = {}
    for seed, extra in ((0, 1), (1, 2), (2, 3)):
        sft = [i % 4 == 0 or i % 4 in range(1, 1 + extra) and i < 100 for i in range(n)]
        dpo = [c and i % 7 != seed for i, c in enumerate(sft)]
        reports[seed] = summarize_results(
            pl.DataFrame(
                _results("base", base, [False] * n) + _results("sft", sft, [False] * n) + _results("dpo", dpo, [False] * n)
            )
        )
    out = seed_summary(reports)
    assert out["seeds"] == [0, 1, 2]
    sft_acc = out["cells"]["arith"]["SFT"]["accuracy"]
    accs = [reports[s].filter(pl.col("variant") == "sft")["accuracy"][0] for s in (0, 1, 2)]
    assert sft_acc["mean"] == pytest.approx(np.mean(accs)) and sft_acc["sd"] == pytest.approx(np.std(accs, ddof=1))
    held = {(d["row"], d["metric"]): d for d in out["directions"]}
    assert held[("SFT", "acc")]["held"] == 1.0 and held[("SFT", "acc")]["supported"] == 1.0
    assert held[("+DPO", "acc")]["held"] == 1.0 and held[("+DPO", "no_answer")]["held"] == 0.0  # no-answer unchanged
