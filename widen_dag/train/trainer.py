"""What SFT and DPO training share: Trainer defaults (on CPU, off with what TRL turns on by
default: bf16 and gradient checkpointing, ~11x slower here), resume from the newest Trainer
checkpoint, the device, one stats type and one logging callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainStats:
    """What a training run reports, SFT or DPO (the DPO-only fields stay at their defaults for SFT)."""

    steps: int = 0
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from_step: int | None = None
    pairs: int = 0
    truncated_pairs: int = 0
    masked_prefix_tokens: int = 0
    rewards_accuracy: float | None = None

    @property
    def s_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

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


def logging_callback(stats: TrainStats, on_log: Callable[[str], None] | None):
    """A Trainer callback that records the loss curve (and DPO's reward accuracy) into ``stats``
    and hands each line to ``on_log`` (the worker's Dagster log)."""
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stats.losses.append((state.global_step, float(logs["loss"])))
                if logs.get("rewards/accuracies") is not None:
                    stats.rewards_accuracy = float(logs["rewards/accuracies"])
                if on_log:
                    on_log(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")

    return _Log()
