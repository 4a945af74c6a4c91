"""Benchmark-shaped files the project generates for the embedded instruct profile.

``tiny_instruct`` reads its problems through the same loaders users point at real data: a
GSM8K-format JSONL (question, answer = worked solution ending in ``#### N``), a
PlanBench-format JSON (instances with a [STATEMENT] query and a ground-truth PDDL plan) of
3-4 block Blocksworld instances, and an IFEval-format JSONL (prompt, instruction_id_list,
kwargs) of arithmetic requests with one or two IFEval constraints of the kinds in
``IF_KINDS``, which a tiny model can learn. ``python -m widen_dag.domains.synthetic <folder>``
writes them.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from widen_dag.domains import arithmetic, blocksworld, instruction_following

# The constraint kinds of the synthetic instruction-following rows: lm-eval's IFEval ids, with
# the sentence the request states each in (IFEval's own phrasing where it has one).
IF_KINDS = ("end", "quote", "no_comma", "lower", "bullets", "short")
IF_END_PHRASES = ("Any other questions?", "Hope this helps.", "Is there anything else I can help with?")
IF_SHORT_WORDS = 12
# Pairs whose constraints cannot hold together on these answers (capitals in every end
# phrase; quotes before the first bullet; bullets or an end phrase past the word limit).
_IF_CLASHES = {frozenset(p) for p in (("lower", "end"), ("quote", "bullets"), ("short", "bullets"), ("short", "end"))}


@dataclass(frozen=True)
class IFConstraint:
    kind: str
    instruction_id: str
    kwargs: dict
    sentence: str

    @property
    def brief(self) -> str:
        """The constraint in a few words: how a tagged solution plans its answer."""
        if self.kind == "end":
            return f'ending with "{self.kwargs["end_phrase"]}"'
        if self.kind == "bullets":
            return f"in {self.kwargs['num_bullets']} bullets"
        if self.kind == "short":
            return f"in under {self.kwargs['num_words']} words"
        return {"quote": "in quotes", "no_comma": "with no commas", "lower": "in lowercase"}[self.kind]


@dataclass(frozen=True)
class IFTask:
    """An arithmetic word problem to answer under IFEval constraints; ``answer`` is its
    GSM8K-format worked solution (what a response's content is made of)."""

    question: str
    answer: str
    constraints: tuple[IFConstraint, ...]

    @property
    def prompt(self) -> str:
        return " ".join([self.question, *(c.sentence for c in self.constraints)])

    def gold(self) -> str:
        """The instruction-following domain's gold: the constraints as validated JSON."""
        ids, kwargs = [c.instruction_id for c in self.constraints], [c.kwargs for c in self.constraints]
        return instruction_following.constraints_from(ids, kwargs).to_gold()

    def row(self, key: int) -> dict[str, object]:
        """The task as an IFEval JSONL row."""
        return {
            "key": key,
            "prompt": self.prompt,
            "instruction_id_list": [c.instruction_id for c in self.constraints],
            "kwargs": [c.kwargs for c in self.constraints],
        }


def if_constraint(kind: str, rng: random.Random, n_steps: int) -> IFConstraint:
    if kind == "end":
        phrase = rng.choice(IF_END_PHRASES)
        sentence = f'Finish your response with this exact phrase "{phrase}". No other words should follow this phrase.'
        return IFConstraint(kind, "startend:end_checker", {"end_phrase": phrase}, sentence)
    if kind == "quote":
        return IFConstraint(kind, "startend:quotation", {}, "Wrap your entire response with double quotation marks.")
    if kind == "no_comma":
        return IFConstraint(kind, "punctuation:no_comma", {}, "Do not use any commas in your response.")
    if kind == "lower":
        sentence = "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."
        return IFConstraint(kind, "change_case:english_lowercase", {}, sentence)
    if kind == "bullets":
        sentence = f"Your answer must contain exactly {n_steps} bullet points. Use the markdown bullet points such as: * This is a point."
        return IFConstraint(kind, "detectable_format:number_bullet_lists", {"num_bullets": n_steps}, sentence)
    if kind == "short":
        sentence = f"Answer with less than {IF_SHORT_WORDS} words."
        kwargs = {"relation": "less than", "num_words": IF_SHORT_WORDS}
        return IFConstraint(kind, "length_constraints:number_words", kwargs, sentence)
    raise ValueError(f"unknown constraint kind {kind!r}; choose from {', '.join(IF_KINDS)}")


def if_tasks(n: int, seed: int, steps: int = 2, max_operand: int = 9, ops: str = "+-") -> list[IFTask]:
    """``n`` word problems, each with one constraint (60%) or two that can hold together."""
    rng = random.Random(seed * 7919 + 1)
    out = []
    for row in gsm8k_rows(n, seed + 50_000, steps, max_operand, ops):
        kinds = [rng.choice(IF_KINDS)]
        if rng.random() < 0.4:
            kinds.append(rng.choice([k for k in IF_KINDS if k != kinds[0] and frozenset((k, kinds[0])) not in _IF_CLASHES]))
        constraints = tuple(if_constraint(k, rng, steps) for k in kinds)
        out.append(IFTask(row["question"], row["answer"], constraints))
    return out


def gsm8k_rows(n: int, seed: int, steps: int = 2, max_operand: int = 9, ops: str = "+-") -> list[dict[str, str]]:
    """Word problems with GSM8K's answer format: one worked line per step, then ``#### N``."""
    rows = []
    for p in arithmetic.generate(n, steps, max_operand, seed, ops):
        lines = [f"{s.left} {s.op} {s.right} = <<{s.left}{s.op}{s.right}={s.result}>>{s.result}" for s in p.steps]
        rows.append({"question": p.question, "answer": "\n".join(lines) + f"\n#### {p.gold}"})
    return rows


def planbench_instances(n: int, seed: int, blocks: tuple[int, ...] = (3, 4)) -> list[dict[str, object]]:
    """PlanBench task-1 rows (its JSON shape) for generated instances, with BFS-optimal plans."""
    out: list[dict[str, object]] = []
    per = [n // len(blocks) + (1 if i < n % len(blocks) else 0) for i in range(len(blocks))]
    for k, (size, count) in enumerate(zip(blocks, per, strict=True)):
        for instance, plan in blocksworld.generate(count, size, seed * 100 + k):
            out.append(
                {
                    "instance_id": len(out) + 1,
                    "query": f"[STATEMENT]\n{instance.statement()}\n\nMy plan is as follows:\n\n[PLAN]",
                    "ground_truth_plan": "\n".join(str(a) for a in plan) + "\n",
                }
            )
    return out


def write_files(
    folder: Path, math_train: int, math_test: int, planbench: int, seed: int = 0, if_train: int = 0, if_test: int = 0
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = gsm8k_rows(math_train + math_test, seed)
    if_rows = [t.row(i) for i, t in enumerate(if_tasks(if_train + if_test, seed))]
    written = []
    parts = [("gsm8k_train.jsonl", rows[:math_train]), ("gsm8k_test.jsonl", rows[math_train:])]
    if if_rows:
        parts += [("ifeval_train.jsonl", if_rows[:if_train]), ("ifeval_test.jsonl", if_rows[if_train:])]
    for name, part in parts:
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        written.append(path)
    path = folder / "planbench_blocksworld.json"
    path.write_text(json.dumps({"domain": "blocksworld", "instances": planbench_instances(planbench, seed)}, indent=1))
    written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "widen_dag/profiles/data/tiny_instruct")
    for p in write_files(target, math_train=48, math_test=40, planbench=72, seed=11, if_train=48, if_test=40):
        print(p)
