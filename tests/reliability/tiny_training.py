"""A tokenizer and a ~30k-parameter Llama for the training fault tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

from widen_dag.domains import arithmetic
from widen_dag.train import bootstrap

TOTAL_STEPS = 8


def rows() -> list[dict[str, str]]:
    problems = arithmetic.generate(64, 2, 9, seed=3, ops="+-")
    return [{"prompt": arithmetic.task_prompt(p.question), "completion": bootstrap.plain_solution(p)} for p in problems]


def tiny_model(folder: Path):
    tok_dir = folder / "tokenizer"
    tokenizer = bootstrap.train_tokenizer([r["prompt"] + r["completion"] for r in rows()], 400, tok_dir)
    model = bootstrap.new_model(
        tokenizer, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=1, max_positions=256, seed=0
    )
    return model, tokenizer
