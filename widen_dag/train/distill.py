"""The distillation bottleneck the paper starts from: long chain-of-thought from a teacher.

The tiny profile has no reasoning model to distil from, so a synthetic over-thinking
teacher writes it: correct solutions padded with habitual reflections ("Wait, ...",
"Alternatively, ...") and repeated steps. SFT on these tells whether the student inherits
the over-thinking (longer outputs, more runs cut off before an answer), as the paper reports.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import polars as pl

HABITS = (
    "Wait, let me check that again.",
    "Alternatively, I could recompute it.",
    "Hmm, let me make sure.",
    "Wait, is that right?",
    "Let me double-check this step once more.",
)


def overthinking_solution(equations: list[str], gold: str, rng: random.Random, reflections: int) -> str:
    parts = [f"{eq}." for eq in equations]
    for _ in range(reflections):
        parts.append(rng.choice(HABITS))
        parts.append(f"{rng.choice(equations)}.")
    parts.append(f"The answer is \\boxed{{{gold}}}.")
    return " ".join(parts)


def synthetic_rows(staged: pl.DataFrame, reflections: int, seed: int) -> list[dict[str, Any]]:
    """Long-CoT SFT rows for the train-split arithmetic problems."""
    train = staged.filter(pl.col("split") == "train").sort("problem_id")
    others = set(train["domain"]) - {"arithmetic"}
    if others:
        raise ValueError(f"the synthetic over-thinking teacher knows only arithmetic, not {sorted(others)}: "
                         "set data.distill.source: file with a long-CoT dataset")
    rows = []
    for r in train.iter_rows(named=True):
        rng = random.Random(f"{seed}:{r['problem_id']}")
        steps = json.loads(r["meta"]).get("steps") or []
        if not steps:
            raise ValueError(f"problem {r['problem_id']}: no reference steps in meta to write a solution from")
        text = overthinking_solution(steps, r["gold"], rng, reflections)
        rows.append({"problem_id": r["problem_id"], "source": "synthetic-overthinking",
                     "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": text}]})
    return rows


def file_rows(path: str, question_field: str, response_field: str, prompt_fn) -> list[dict[str, Any]]:
    """Long-CoT rows from a JSONL or Parquet file (question + teacher response)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.distill.path: {p} does not exist")
    df = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_ndjson(p)
    missing = [f for f in (question_field, response_field) if f not in df.columns]
    if missing:
        raise ValueError(f"{p}: missing field(s) {', '.join(missing)} (columns: {', '.join(df.columns)})")
    return [{"problem_id": f"distill-{i}", "source": str(p),
             "messages": [{"role": "user", "content": prompt_fn(q)}, {"role": "assistant", "content": a}]}
            for i, (q, a) in enumerate(zip(df[question_field], df[response_field], strict=True)) if q and a]
