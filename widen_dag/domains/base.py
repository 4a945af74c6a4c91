"""What every problem domain provides: a task prompt, an answer extractor and a verifier.

A verdict has three outcomes, not two: correct, wrong, and no-answer (nothing could be
extracted). The paper's headline metric is the no-answer rate, so a missing answer is never
folded into "wrong".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Verdict:
    correct: bool
    no_answer: bool
    answer: str | None = None
    detail: str = ""

    @property
    def reward(self) -> float:
        return 1.0 if self.correct else 0.0


@dataclass(frozen=True)
class Problem:
    """A staged problem as search and evaluation see it: its id, domain, question and gold, and
    whether its dataset reads a response with no answer block (``answer_fallback``)."""

    problem_id: str
    domain: str
    question: str
    gold: str
    answer_fallback: bool = False

    @classmethod
    def from_staged(cls, row: dict[str, Any]) -> Problem:
        """From a ``stg_problems`` row; the loader records ``answer_fallback`` in its meta."""
        meta = json.loads(row.get("meta") or "{}")
        return cls(row["problem_id"], row["domain"], row["question"], row["gold"], bool(meta.get("answer_fallback", False)))


@dataclass(frozen=True)
class RawRecord:
    """One row as a loader read it, before normalisation (``error`` set when unreadable)."""

    row_index: int
    question: str | None
    gold: str | None
    source_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Domain(Protocol):
    name: str

    def task_prompt(self, question: str) -> str:
        """The user turn: instruction with the expected answer format, then the problem."""
        ...

    def normalize_gold(self, gold: str) -> str:
        """The gold answer in canonical form; raises ValueError when it does not parse."""
        ...

    def verify(self, response: str, gold: str, question: str | None = None, answer_fallback: bool = False) -> Verdict:
        """Score a model response (tagged thoughts or plain text) against the gold answer;
        ``answer_fallback`` is the dataset's reading of a response with no answer block."""
        ...


# The node format of SPEC.md section 1, stated once so every domain's prompt agrees with it.
FORMAT_INSTRUCTION = (
    "Think step by step in tagged thoughts such as <sub-task>...</sub-task>, "
    "<thinking>...</thinking> and <double-check>...</double-check>, and finish with "
    "<answer>...</answer>."
)


def answer_block_closed(text: str) -> bool:
    """Whether the response's last ``<answer>`` block is closed by ``</answer>``."""
    start = text.rfind("<answer>")
    return start != -1 and text.find("</answer>", start) != -1


def cut_off_verdict(text: str, finish_reason: str, verdict: Verdict) -> tuple[Verdict, bool]:
    """(the verdict to count, whether the response was cut off): a response that ran into the
    token limit is a no-answer unless its answer block closed, whatever it said on the way (a
    model that loops until the limit often states an intermediate result first; a cut-off
    response is not an answer a user would accept)."""
    cut_off = finish_reason == "length"
    if cut_off and not answer_block_closed(text):
        return Verdict(False, True, None, "cut off at the token limit before its answer block closed"), True
    return verdict, cut_off


def problem_id(domain: str, question: str, gold: str) -> str:
    """A stable id from the content, so the same problem gets the same id in every run."""
    digest = hashlib.sha256(json.dumps([domain, question.strip(), gold.strip()]).encode()).hexdigest()
    return f"{domain[:4]}-{digest[:16]}"
