"""Benchmark-shaped files the project generates for the embedded instruct profile.

``tiny_instruct`` reads its problems through the same loaders users point at real data: a
GSM8K-format JSONL (question, answer = worked solution ending in ``#### N``) and a
PlanBench-format JSON (instances with a [STATEMENT] query and a ground-truth PDDL plan) of
3-4 block Blocksworld instances. ``python -m widen_dag.domains.synthetic <folder>`` writes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from widen_dag.domains import arithmetic, blocksworld


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


def write_files(folder: Path, math_train: int, math_test: int, planbench: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = gsm8k_rows(math_train + math_test, seed)
    written = []
    for name, part in (("gsm8k_train.jsonl", rows[:math_train]), ("gsm8k_test.jsonl", rows[math_train:])):
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        written.append(path)
    path = folder / "planbench_blocksworld.json"
    path.write_text(json.dumps({"domain": "blocksworld", "instances": planbench_instances(planbench, seed)}, indent=1))
    written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "widen_dag/profiles/data/tiny_instruct")
    for p in write_files(target, math_train=48, math_test=40, planbench=72, seed=11):
        print(p)
