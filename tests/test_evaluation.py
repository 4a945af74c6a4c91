from __future__ import annotations

import json
import random

import polars as pl
import pytest

from widen_dag.evaluate import REFLECTION_RE, summarize
from widen_dag.evaluate.report import TABLE_ROWS, markdown_table, summarize_results
from widen_dag.train import distill


def _rows(variant: str, correct: list[bool], no_answer: list[bool], tokens: int, samples: int = 2) -> list[dict]:
    out = []
    for i, (c, na) in enumerate(zip(correct, no_answer, strict=True)):
        for k in range(samples):
            out.append({"variant": variant, "eval_set": "arith", "problem_id": f"p{i}", "sample": k,
                        "correct": c if k == 0 else not c, "no_answer": na and k == 0, "n_tokens": tokens, "reflections": 1})
    return out


def test_summary_uses_first_samples_for_accuracy_and_all_samples_for_test_at_n():
    rows = pl.DataFrame(_rows("sft", [True, False, False, False], [False, True, False, False], 40)
                        + _rows("base", [False] * 4, [True] * 4, 90))
    s = {r["variant"]: r for r in summarize_results(rows).iter_rows(named=True)}
    assert s["sft"]["accuracy"] == 0.25 and s["sft"]["no_answer_rate"] == 0.25
    assert s["sft"]["test_at_n"] == 1.0  # the second sample flips every verdict
    assert s["base"]["no_answer_rate"] == 1.0 and s["base"]["mean_tokens"] == 90
    assert summarize_results(rows)["variant"].to_list() == ["base", "sft"]  # the table's row order


def test_markdown_table_has_the_paper_rows_in_order_with_accuracy_and_no_answer():
    rows = pl.DataFrame(sum((_rows(v, [True, False], [False, True], 30) for _, v in TABLE_ROWS), []))
    table = markdown_table(summarize_results(rows))
    labels = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    assert labels == [label for label, _ in TABLE_ROWS]
    assert "| base | 50.0 (50.0) |" in table


def test_summarize_counts_no_answer_apart_from_wrong():
    rows = [{"problem_id": "a", "sample": 0, "correct": False, "no_answer": True, "n_tokens": 5, "well_formed": False,
             "reflections": 0},
            {"problem_id": "b", "sample": 0, "correct": False, "no_answer": False, "n_tokens": 7, "well_formed": True,
             "reflections": 2}]
    s = summarize(rows)
    assert s["accuracy"] == 0 and s["no_answer_rate"] == 0.5 and s["median_tokens"] == 6


def test_reflection_phrases_are_counted():
    assert len(REFLECTION_RE.findall("Wait, is that right? Alternatively, hmm. Wait! something is wrong")) == 5


def test_overthinking_teacher_pads_correct_solutions_with_habits():
    staged = pl.DataFrame({"problem_id": ["p1", "p2"], "domain": "arithmetic", "split": ["train", "eval"],
                           "prompt": ["solve 1", "solve 2"], "gold": ["9", "3"],
                           "meta": [json.dumps({"steps": ["4 + 5 = 9"]}), json.dumps({"steps": ["1 + 2 = 3"]})]})
    rows = distill.synthetic_rows(staged, reflections=6, seed=0)
    assert [r["problem_id"] for r in rows] == ["p1"]  # train split only
    text = rows[0]["messages"][1]["content"]
    assert text.endswith("The answer is \\boxed{9}.") and len(REFLECTION_RE.findall(text)) >= 5
    assert rows == distill.synthetic_rows(staged, reflections=6, seed=0)
    # Every domain has a teacher now (tests/test_real_profiles.py); one without is a clear error.
    with pytest.raises(ValueError, match="no writer for domain 'chess'.*data.distill.source: file"):
        distill.synthetic_rows(staged.with_columns(pl.lit("chess").alias("domain")), 6, 0)


def test_overthinking_solution_is_seeded():
    a = distill.overthinking_solution(["1 + 1 = 2"], "2", random.Random(1), 3)
    assert a == distill.overthinking_solution(["1 + 1 = 2"], "2", random.Random(1), 3)
