"""Supervised fine-tuning on TRL's SFTTrainer, loss on the completion only.

Used for the tiny models' bootstrap and for `sft_checkpoint`. On CPU it switches off what
TRL turns on by default (bf16, gradient checkpointing: ~11x slower here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainStats:
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from_step: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None


def trainer_defaults(device: str, seed: int, log_every: int, checkpoint_every: int = 0) -> dict[str, Any]:
    """Trainer arguments SFT and DPO share: CPU switches, seeds, and Trainer checkpoints every
    ``checkpoint_every`` steps (0: none), the newest one kept, so a killed run resumes."""
    on_cpu = device == "cpu"
    saving: dict[str, Any] = {"save_strategy": "no"}
    if checkpoint_every > 0:
        saving = {"save_strategy": "steps", "save_steps": checkpoint_every, "save_total_limit": 1,
                  "save_only_model": False}  # optimizer, scheduler and RNG states too: an exact resume
    return {
        "bf16": False if on_cpu else None,  # TRL turns bf16 on by default, even on CPU
        "gradient_checkpointing": False,  # ... and gradient checkpointing: ~11x slower on CPU
        "use_cpu": on_cpu,
        "report_to": [],
        **saving,
        "logging_steps": log_every,
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


def quiet(trainer: Any) -> None:
    """Drop the Trainer's stdout printer: losses reach Dagster through our own log callback."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_resuming(trainer: Any, output_dir: str) -> int | None:
    """``trainer.train()``, resumed from the newest Trainer checkpoint in ``output_dir`` if one
    exists (a run killed mid-way); returns the step it resumed from, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    return int(Path(last).name.rsplit("-", 1)[-1]) if last else None


def resolve_device(pref: str) -> str:
    import torch

    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("profile asks for device 'cuda' but torch sees no CUDA device")
    return "cuda" if pref in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def _logging_callback(stats: TrainStats, on_log: Callable[[str], None] | None):
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stats.losses.append((state.global_step, float(logs["loss"])))
                if on_log:
                    on_log(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")

    return _Log()


def train_sft(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, str]],
    *,
    output_dir: str,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    epochs: float = 1.0,
    max_steps: int | None = None,
    warmup_ratio: float = 0.03,
    scheduler: str = "cosine",
    device: str = "cpu",
    seed: int = 0,
    log_every: int = 20,
    on_log: Callable[[str], None] | None = None,
    checkpoint_every: int = 0,
    callbacks: list[Any] | None = None,
) -> TrainStats:
    """Train ``model`` in place on prompt/completion rows; returns loss curve and throughput."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("SFT dataset is empty: nothing to train on")
    bad = [i for i, r in enumerate(rows) if not r.get("completion")]
    if bad:
        raise ValueError(f"SFT rows {bad[:5]} have an empty completion")
    steps = max_steps or max(1, math.ceil(len(rows) * epochs / batch_size))
    config = SFTConfig(
        output_dir=output_dir,
        max_length=max_length,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        max_steps=steps,
        warmup_steps=int(warmup_ratio * steps),
        lr_scheduler_type=scheduler,
        weight_decay=0.0,
        packing=False,
        **trainer_defaults(device, seed, log_every, checkpoint_every),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
    )
    stats = TrainStats()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[_logging_callback(stats, on_log), *(callbacks or [])],
    )
    quiet(trainer)
    # Tokens actually trained on (prompt + completion, after truncation), for tokens/s.
    lengths = [min(len(ids), max_length) for ids in trainer.train_dataset["input_ids"]]
    start = time.perf_counter()
    stats.resumed_from_step = train_resuming(trainer, output_dir)
    stats.seconds = time.perf_counter() - start
    stats.steps = steps
    stats.examples = steps * batch_size
    stats.tokens = int(sum(lengths) / len(lengths) * stats.examples)
    model.config.use_cache = True  # TRL may leave use_cache=False: generate() would be 10x slower
    return stats
