"""The distillation bottleneck the paper starts from: long chain-of-thought from a teacher.

Without a reasoning model to distil from, a synthetic over-thinking teacher writes it, for
every reasoning domain: correct solutions padded with habitual reflections ("Wait, ...",
"Alternatively, ...") and repeated steps (arithmetic: the reference equations; math: the
problem's sentences re-read, then the gold answer; Blocksworld: a breadth-first optimal plan,
each step second-guessed). SFT on these tells whether the student inherits the over-thinking
(longer outputs, more runs cut off before an answer), as the paper reports. It writes nothing
for instruction following (``NOT_DISTILLED``), as real long-CoT data holds none. Real long CoT
comes from a file (``data.distill.source: file``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import polars as pl

from widen_dag.domains import blocksworld

HABITS = (
    "Wait, let me check that again.",
    "Alternatively, I could recompute it.",
    "Hmm, let me make sure.",
    "Wait, is that right?",
    "Let me double-check this step once more.",
)


def overthinking_solution(equations: list[str], gold: str, rng: random.Random, reflections: int, final: str | None = None) -> str:
    """The steps, then ``reflections`` habits each repeating a random step, then the final answer
    (default: ``The answer is \\boxed{gold}.``)."""
    parts = [f"{eq.rstrip('.')}." for eq in equations]
    for _ in range(reflections):
        parts.append(rng.choice(HABITS))
        parts.append(f"{rng.choice(equations).rstrip('.')}.")
    parts.append(final if final is not None else f"The answer is \\boxed{{{gold}}}.")
    return " ".join(parts)


def _math_steps(question: str) -> list[str]:
    # No reference solution is staged for a math problem: the teacher re-reads the problem.
    sentences = [x.strip() for x in re.split(r"(?<=[.?!])\s+", question.strip()) if x.strip()]
    return [f"Let me re-read: {x}" for x in sentences[:6]] or ["Let me re-read the problem"]


def _teacher_text(row: dict[str, Any], rng: random.Random, reflections: int) -> str:
    domain = row["domain"]
    if domain == "arithmetic":
        steps = json.loads(row["meta"] or "{}").get("steps") or []
        if not steps:
            raise ValueError(f"problem {row['problem_id']}: no reference steps in meta to write a solution from")
        return overthinking_solution(steps, row["gold"], rng, reflections)
    if domain == "math":
        return overthinking_solution(_math_steps(row["question"]), row["gold"], rng, reflections)
    if domain == "blocksworld":
        plan = blocksworld.optimal_plan(blocksworld.parse_statement(row["question"]))
        steps = [f"I {a.english()}" for a in plan] or ["The goal already holds"]
        final = "My plan is as follows:\n" + "\n".join(a.english() for a in plan) + "\n[PLAN END]"
        return overthinking_solution(steps, "", rng, reflections, final=final)
    raise ValueError(
        f"the synthetic over-thinking teacher has no writer for domain {domain!r}: "
        "set data.distill.source: file with a long-CoT dataset"
    )


# Domains the synthetic teacher writes nothing for: long-CoT exports of reasoning models
# (Sky-T1's math and code) hold no instruction-following data either, so the distilled student
# meets those problems only at evaluation, which is where the paper measures its Multi-IF drop.
NOT_DISTILLED = ("instruction_following",)


def not_distilled(staged: pl.DataFrame) -> dict[str, int]:
    """Train-split problems per domain that the synthetic teacher leaves out (NOT_DISTILLED)."""
    train = staged.filter((pl.col("split") == "train") & pl.col("domain").is_in(NOT_DISTILLED))
    return dict(train.group_by("domain").len().sort("domain").iter_rows())


def synthetic_rows(staged: pl.DataFrame, reflections: int, seed: int) -> list[dict[str, Any]]:
    """Long-CoT SFT rows for the train-split problems of every domain but NOT_DISTILLED."""
    train = staged.filter((pl.col("split") == "train") & ~pl.col("domain").is_in(NOT_DISTILLED)).sort("problem_id")
    if train.is_empty():
        raise ValueError(
            "the synthetic over-thinking teacher has no train problem to write for: it writes none for "
            f"{', '.join(NOT_DISTILLED)}; add a math, arithmetic or blocksworld dataset, or set data.distill.source: file"
        )
    rows = []
    for r in train.iter_rows(named=True):
        rng = random.Random(f"{seed}:{r['problem_id']}")
        text = _teacher_text(r, rng, reflections)
        rows.append(
            {
                "problem_id": r["problem_id"],
                "source": "synthetic-overthinking",
                "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": text}],
            }
        )
    return rows


def file_rows(path: str | None, question_field: str, response_field: str, prompt_fn) -> list[dict[str, Any]]:
    """Long-CoT rows from a JSONL or Parquet file (question + teacher response)."""
    if not path:
        raise ValueError(
            "data.distill.path: source 'file' needs a long-CoT JSONL/Parquet (question and response "
            "fields); set data.distill.path, or data.distill.source: synthetic"
        )
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"data.distill.path: {p} does not exist; set data.distill.path to a long-CoT "
            "JSONL/Parquet file, or data.distill.source: synthetic"
        )
    df = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_ndjson(p)
    missing = [f for f in (question_field, response_field) if f not in df.columns]
    if missing:
        raise ValueError(f"{p}: missing field(s) {', '.join(missing)} (columns: {', '.join(df.columns)})")
    return [
        {
            "problem_id": f"distill-{i}",
            "source": str(p),
            "messages": [{"role": "user", "content": prompt_fn(q)}, {"role": "assistant", "content": a}],
        }
        for i, (q, a) in enumerate(zip(df[question_field], df[response_field], strict=True))
        if q and a
    ]
