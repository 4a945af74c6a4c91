"""What SFT and DPO training share: Trainer defaults (on CPU, off with what TRL turns on by
default: bf16 and gradient checkpointing, ~11x slower here; on CUDA both stay on), optimizer
steps from the global batch, LoRA through peft, the model to save (LoRA merged, shards
gathered), resume from the newest Trainer checkpoint, one stats type and one logging callback."""

from __future__ import annotations

import math
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
    processes: int = 1  # data-parallel processes the steps were computed for
    global_batch: int = 0  # examples (or pairs) per optimizer step across all processes
    # The model to save once training ends (LoRA merged into the weights) and, under FSDP /
    # ZeRO-3, its full state dict gathered from the shards (None where the model holds it).
    export: tuple[Any, dict | None] | None = field(default=None, repr=False)

    @property
    def s_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None


def num_processes() -> int:
    """Data-parallel processes of this launch (``accelerate launch`` / torchrun sets WORLD_SIZE)."""
    import os

    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def optimizer_steps(rows: int, epochs: float, per_device_batch: int, processes: int = 1, grad_accum: int = 1) -> int:
    """Optimizer steps for ``epochs`` passes over ``rows``: each step consumes the global batch,
    per-device batch x processes x gradient accumulation (not the per-device batch: with N
    GPUs that would train N times the configured epochs)."""
    return max(1, math.ceil(rows * epochs / (per_device_batch * processes * grad_accum)))


def lora_config(lora: dict[str, Any] | None):
    """A peft ``LoraConfig`` for TRL's ``peft_config`` from the profile's ``train.lora`` (as a
    dict), or None when LoRA is off."""
    if not lora or not lora.get("enabled"):
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )


def trainer_defaults(
    device: str,
    seed: int,
    log_every: int,
    checkpoint_every: int = 0,
    *,
    gradient_checkpointing: bool | None = None,
    grad_accum: int = 1,
) -> dict[str, Any]:
    """Trainer arguments SFT and DPO share: device switches, seeds, and Trainer checkpoints every
    ``checkpoint_every`` steps (0: none), the newest one kept, so a killed run resumes.

    Gradient checkpointing (unset: on for CUDA, where activations of a 4096-token batch decide
    whether an 8B model fits; off on CPU, where it measured ~11x slower) uses the non-reentrant
    variant, which DDP and frozen LoRA base weights need."""
    on_cpu = device == "cpu"
    checkpointing = (not on_cpu) if gradient_checkpointing is None else gradient_checkpointing
    saving: dict[str, Any] = {"save_strategy": "no"}
    if checkpoint_every > 0:
        saving = {
            "save_strategy": "steps",
            "save_steps": checkpoint_every,
            "save_total_limit": 1,
            "save_only_model": False,
        }  # optimizer, scheduler and RNG states too: an exact resume
    return {
        "bf16": False if on_cpu else None,  # TRL turns bf16 on by default, even on CPU
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
        "gradient_accumulation_steps": grad_accum,
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


def export_model(trainer: Any) -> tuple[Any, dict | None]:
    """The model to save after training, called on every rank (gathering shards is collective).

    FSDP / ZeRO-3: the full state dict is gathered from the shards (rank 0 gets it). LoRA: the
    adapter is merged into the base weights, so the checkpoint is a plain HF model that
    evaluation and vLLM load like any other."""
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    state = acc.get_state_dict(trainer.model) if sharded else None
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.use_cache = True  # TRL may leave use_cache=False: generate() would be 10x slower
    return model, state


def model_device(model: Any) -> str:
    """Where a model's weights are (``cuda:1``, ``cpu``), for the per-rank placement report."""
    return str(next(model.parameters()).device)


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
