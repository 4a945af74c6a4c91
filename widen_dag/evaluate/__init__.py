"""Scoring sampled responses: accuracy, no-answer rate, lengths, reflections, Test@N.

Pure Python over a generation backend; the domains' verifiers give the verdicts.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

import polars as pl

from widen_dag.domains import get_domain
from widen_dag.domains.base import Problem, cut_off_verdict
from widen_dag.llm.base import Backend, GenerationRequest
from widen_dag.search.thoughts import is_well_formed
from widen_dag.seeding import stable_seed

# Habitual reflection phrases the paper counts ("formalistic long-time thinking").
REFLECTION_RE = re.compile(
    r"\b(wait|alternatively|let me (?:re-?check|think again|double[- ]check)|hmm)\b|something is wrong", re.IGNORECASE
)


# One row of `eval_results`: a scored response of one checkpoint on one eval set.
EVAL_SCHEMA = {
    "variant": pl.String,
    "checkpoint": pl.String,
    "eval_set": pl.String,
    "problem_id": pl.String,
    "sample": pl.Int32,
    "response": pl.String,
    "n_tokens": pl.Int32,
    "finish_reason": pl.String,
    "cut_off": pl.Boolean,
    "answer": pl.String,
    "correct": pl.Boolean,
    "no_answer": pl.Boolean,
    "well_formed": pl.Boolean,
    "reflections": pl.Int32,
    "decoding": pl.String,
}


def sample_and_score(
    backend: Backend, problems: list[Problem], *, n: int, temperature: float, top_p: float, max_tokens: int, seed: int = 0
) -> list[dict[str, Any]]:
    """n samples per problem; one row per sample with its verdict and lengths. A sample that hit
    the token limit is flagged ``cut_off`` and is a no-answer unless its answer block closed.

    Each problem's request carries its own seed, so scores do not depend on batching.
    """
    requests = [
        GenerationRequest(
            prompt=backend.chat_prompt(get_domain(p.domain).task_prompt(p.question)),
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=stable_seed(seed, p.problem_id),
        )
        for p in problems
    ]
    rows = []
    for p, samples in zip(problems, backend.generate(requests), strict=True):
        domain = get_domain(p.domain)
        for k, s in enumerate(samples):
            v, cut_off = cut_off_verdict(s.text, s.finish_reason, domain.verify(s.text, p.gold, p.question, p.answer_fallback))
            rows.append(
                {
                    "problem_id": p.problem_id,
                    "sample": k,
                    "response": s.text,
                    "n_tokens": s.n_tokens,
                    "finish_reason": s.finish_reason,
                    "cut_off": cut_off,
                    "answer": v.answer,
                    "correct": v.correct,
                    "no_answer": v.no_answer,
                    "well_formed": is_well_formed(s.text),
                    "reflections": len(REFLECTION_RE.findall(s.text)),
                }
            )
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy and no-answer rate over first samples; Test@N over all samples of a problem."""
    if not rows:
        return {"n": 0}
    first = [r for r in rows if r["sample"] == 0]
    by_problem: dict[str, bool] = {}
    for r in rows:
        by_problem[r["problem_id"]] = by_problem.get(r["problem_id"], False) or r["correct"]
    tokens = [r["n_tokens"] for r in first]
    return {
        "n": len(first),
        "accuracy": sum(r["correct"] for r in first) / len(first),
        "no_answer_rate": sum(r["no_answer"] for r in first) / len(first),
        "cut_off_rate": sum(r.get("cut_off", False) for r in first) / len(first),
        "well_formed_rate": sum(r["well_formed"] for r in first) / len(first),
        "mean_tokens": statistics.fmean(tokens),
        "median_tokens": float(statistics.median(tokens)),
        "reflections_per_response": statistics.fmean(r["reflections"] for r in first),
        "test_at_n": sum(by_problem.values()) / len(by_problem),
        "samples_per_problem": len(rows) / len(by_problem),
    }


def eval_problem_sets(staged: pl.DataFrame, limit: int | None = None) -> dict[str, list[Problem]]:
    """The eval-split problems of ``stg_problems`` by source (eval set), in problem-id order,
    at most ``limit`` per set."""
    staged = staged.filter(pl.col("split") == "eval").sort("problem_id")
    out: dict[str, list[Problem]] = {}
    for (source,), group in staged.group_by("source", maintain_order=True):
        rows = group.head(limit) if limit else group
        out[source] = [Problem.from_staged(r) for r in rows.iter_rows(named=True)]
    if not out:
        raise ValueError("no eval-split problems in stg_problems: raise problems.eval_fraction or add an eval dataset")
    return out
