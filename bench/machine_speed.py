"""How fast this machine is right now, for reading a wall time beside it: one training step of a
Llama of the tiny policy's dimensions (4 layers, hidden 128, vocabulary 790; its own untied output
layer, where `widen_dag.train.bootstrap.new_model` ties it; batch 32 x 130 tokens, AdamW), timed
over 30 steps after 5 warm-up steps, at the torch thread count given. The dimensions are fixed
here, not read from the profile, so readings stay comparable when the profile changes.

    .venv/bin/python bench/machine_speed.py [--threads 2]

Prints JSON with `s_per_step`. On this project's 2-vCPU AMD EPYC the same code read 0.24 to 0.34 s
within one afternoon, idle: demo wall times are comparable only beside such a reading.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=790,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(3, config.vocab_size, (32, 130), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    print(
        json.dumps(
            {
                "bench": "machine_speed",
                "s_per_step": round(seconds, 4),
                "threads": args.threads,
                "steps": args.steps,
                "cpu": cpu_model(),
                "torch": torch.__version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )


if __name__ == "__main__":
    main()
