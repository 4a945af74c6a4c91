"""SFT throughput and DPO step time on CPU, on the tiny profile's model architecture.

    .venv/bin/python bench/training.py [--model lake/models/student_base]

Prints JSON with `sft_tokens_per_s` and `dpo_s_per_step` (joint_masked: sigmoid + SFT terms,
label smoothing, shared-prefix mask; batch and max_length from the tiny profile).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from widen_dag.domains import arithmetic
from widen_dag.profiles import load_profile
from widen_dag.train import bootstrap
from widen_dag.train.dpo import train_dpo
from widen_dag.train.sft import train_sft


def _rows(n: int, seed: int):
    rng = random.Random(seed)
    problems = arithmetic.generate(n, 2, 9, seed=seed, ops="+-")
    sft, pairs = [], []
    for p in problems:
        good = bootstrap.tagged_solution(p, rng, 0.3)
        cut = good.rindex("<double-check>")
        bad = good[:cut] + f"<answer>The answer is: \\boxed{{{int(p.gold) + 1}}}</answer>"
        prompt = [{"role": "user", "content": arithmetic.task_prompt(p.question)}]
        sft.append({"prompt": prompt, "completion": [{"role": "assistant", "content": good}]})
        pairs.append(
            {
                "problem_id": p.question[:20],
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
        )
    return sft, pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="lake/models/student_base")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(args.model) / "config.json").is_file():
        print(f"no model at {args.model}: run `make demo` (or materialize student_base) first", file=sys.stderr)
        return 2
    profile = load_profile("tiny")
    sft_cfg, dpo_cfg = profile.train.sft, profile.train.dpo
    v = dpo_cfg.variants["joint_masked"]
    sft_rows, pairs = _rows(512, seed=5)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        sft = train_sft(
            model,
            tok,
            sft_rows,
            output_dir=tmp,
            learning_rate=sft_cfg.learning_rate,
            batch_size=sft_cfg.batch_size,
            max_length=sft_cfg.max_length,
            epochs=1,
            device="cpu",
        )
        ref = AutoModelForCausalLM.from_pretrained(args.model)
        dpo = train_dpo(
            model,
            ref,
            tok,
            pairs[:128],
            output_dir=tmp,
            beta=dpo_cfg.beta,
            learning_rate=dpo_cfg.learning_rate,
            batch_size=dpo_cfg.batch_size,
            max_length=dpo_cfg.max_length,
            epochs=1,
            label_smoothing=v.label_smoothing,
            sft_weight=v.sft_weight,
            prefix_mask=v.prefix_mask,
            device="cpu",
        )
    print(
        json.dumps(
            {
                "model": args.model,
                "parameters": bootstrap.n_parameters(model),
                "device": "cpu",
                "sft_tokens_per_s": round(sft.tokens_per_s, 1),
                "sft_steps": sft.steps,
                "sft_seconds": round(sft.seconds, 2),
                "dpo_s_per_step": round(dpo.s_per_step, 4),
                "dpo_steps": dpo.steps,
                "dpo_batch_size": dpo_cfg.batch_size,
                "dpo_variant": "joint_masked",
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
