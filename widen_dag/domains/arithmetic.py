"""The embedded default domain: seeded multi-step arithmetic word problems.

Small enough that a ~1M-parameter model learns it in CPU minutes, hard enough (carrying,
multiplication, several steps) that a single sample is often wrong and search matters.
Each problem carries its reference steps, from which the tiny models' training texts are
written (see widen_dag.train.bootstrap).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from widen_dag.domains import math as math_domain
from widen_dag.domains.base import Verdict

name = "arithmetic"

_NAMES = ["Ann", "Ben", "Cal", "Dee", "Eve", "Finn", "Gus", "Ivy"]
_ITEMS = ["apples", "coins", "books", "cards", "pens", "shells"]
_OPS = {
    "+": ("gets {b} more", lambda a, b: a + b),
    "-": ("gives away {b}", lambda a, b: a - b),
    "*": ("ends up with {b} times as many", lambda a, b: a * b),
}


@dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    result: int

    def equation(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.result}"


@dataclass(frozen=True)
class ArithmeticProblem:
    question: str
    gold: str
    start: int
    steps: tuple[Step, ...]


def generate(n: int, steps: int = 2, max_operand: int = 9, seed: int = 0, ops: str = "+-*") -> list[ArithmeticProblem]:
    """``n`` distinct problems of ``steps`` operations (drawn from ``ops``) on operands in [1, max_operand].

    Intermediate results stay non-negative; a product is only drawn while the running
    value is small, so answers stay in a range a tiny model can learn.
    """
    if n <= 0 or steps <= 0 or max_operand < 2:
        raise ValueError("n and steps must be positive and max_operand >= 2")
    if not ops or set(ops) - set(_OPS) or "+" not in ops:
        raise ValueError(f"ops must be a string of {''.join(_OPS)} including '+', got {ops!r}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[ArithmeticProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"cannot draw {n} distinct problems with steps={steps}, max_operand={max_operand}")
        who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        value = start = rng.randint(1, max_operand)
        chain: list[Step] = []
        sentences = [f"{who} has {start} {item}."]
        for _ in range(steps):
            allowed = [o for o in "+-" if o in ops] + (["*"] if "*" in ops and value <= max_operand else [])
            op = rng.choice(allowed)
            right = rng.randint(2 if op == "*" else 1, max_operand)
            if op == "-" and right > value:
                op = "+"
            result = _OPS[op][1](value, right)
            chain.append(Step(value, op, right, result))
            sentences.append(f"{who} {_OPS[op][0].format(b=right)}.")
            value = result
        sentences.append(f"How many {item} does {who} have?")
        question = " ".join(sentences)
        if question in seen:
            continue
        seen.add(question)
        out.append(ArithmeticProblem(question, str(value), start, tuple(chain)))
    return out


def task_prompt(question: str) -> str:
    # Short on purpose: the tiny models pay for every prompt token in CPU training time.
    return f"Solve in tagged thoughts, then <answer>\\boxed{{number}}</answer>.\n{question.strip()}"


def normalize_gold(gold: str) -> str:
    value = math_domain.as_number(gold)
    if value is None or value.denominator != 1:
        raise ValueError(f"arithmetic gold must be an integer, got {gold!r}")
    return str(value.numerator)


def verify(response: str, gold: str, question: str | None = None, answer_fallback: bool = False) -> Verdict:
    return math_domain.verify(response, gold, answer_fallback=answer_fallback)
