"""Preference-data helpers that need neither TRL nor torch: shared prefixes, chat lengths,
pair validation and the loss mix of a DPO variant. ``widen_dag.train.dpo`` builds on them;
benchmarks and the SQL reference implementation import them without pulling in TRL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def common_prefix_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def chat_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a conversation rendered with the model's chat template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class PairDataError(ValueError):
    """Preference data that would poison or crash training; names the row."""


def validate_pairs(rows: list[dict[str, Any]]) -> None:
    if not rows:
        raise PairDataError("preference dataset is empty: nothing to train on")
    for i, r in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if not r.get(key):
                raise PairDataError(f"pair {i} ({r.get('problem_id', '?')}): empty {key}")
        if r["chosen"] == r["rejected"]:
            raise PairDataError(f"pair {i} ({r.get('problem_id', '?')}): chosen and rejected are identical")


def dpo_loss_terms(label_smoothing: float, sft_weight: float) -> tuple[list[str], list[float]]:
    """TRL loss types and weights for DPO with conservative label smoothing eps and an SFT term.

    With x = beta * margin, TRL's robust loss is ``(-(1-eps) log s(x) + eps log s(-x)) / (1-2eps)
    = -log s(x) - eps x / (1-2eps)`` and cDPO is ``-log s(x) + eps x`` (log s(-x) = log s(x) - x),
    so cDPO = (2-2eps) * sigmoid - (1-2eps) * robust, exactly."""
    if label_smoothing > 0:
        types, weights = ["sigmoid", "robust"], [2 - 2 * label_smoothing, -(1 - 2 * label_smoothing)]
    else:
        types, weights = ["sigmoid"], [1.0]
    if sft_weight > 0:
        types, weights = [*types, "sft"], [*weights, sft_weight]
    return types, weights
