"""Supervised fine-tuning on TRL's SFTTrainer, loss on the completion only.

Used for the tiny models' bootstrap and for `sft_checkpoint`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from widen_dag.train.batching import length_grouped
from widen_dag.train.trainer import (
    TrainStats,
    export_model,
    init_distributed,
    logging_callback,
    lora_config,
    num_processes,
    optimizer_steps,
    quiet,
    tracking,
    train_resuming,
    trainer_defaults,
)


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
    grad_accum: int = 1,
    gradient_checkpointing: bool | None = None,
    lora: dict[str, Any] | None = None,
    report_to: list[str] | None = None,
    tracking_dir: str | None = None,
    group_by_length: bool = False,
) -> TrainStats:
    """Train ``model`` on prompt/completion rows; returns loss curve, throughput and the model to
    save (``stats.export``). ``batch_size`` is per device; the optimizer steps come from the
    global batch (x processes x ``grad_accum``). ``lora`` (the profile's ``train.lora``) trains
    adapters through TRL's ``peft_config`` and merges them into the exported model. ``report_to``:
    the profile's trackers (TensorBoard event files into ``tracking_dir``). ``group_by_length``:
    batches of rows of similar length in random order (``widen_dag.train.batching``), less padding."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("SFT dataset is empty: nothing to train on")
    bad = [i for i, r in enumerate(rows) if not r.get("completion")]
    if bad:
        raise ValueError(f"SFT rows {bad[:5]} have an empty completion")
    init_distributed(device)
    processes = num_processes()
    steps = max_steps or optimizer_steps(len(rows), epochs, batch_size, processes, grad_accum)
    tracker_names, tracker_callbacks = tracking(report_to, tracking_dir)
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
        **trainer_defaults(
            device,
            seed,
            log_every,
            checkpoint_every,
            gradient_checkpointing=gradient_checkpointing,
            grad_accum=grad_accum,
            report_to=tracker_names,
        ),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
    )
    stats = TrainStats()
    trainer = (length_grouped(SFTTrainer) if group_by_length else SFTTrainer)(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[logging_callback(stats, on_log), *tracker_callbacks, *(callbacks or [])],
        peft_config=lora_config(lora),
    )
    quiet(trainer)
    start = time.perf_counter()
    stats.resumed_from_step = train_resuming(trainer, output_dir)
    stats.seconds = time.perf_counter() - start
    stats.steps = trainer.state.global_step  # what ran, not what was planned
    stats.processes = processes
    stats.global_batch = batch_size * processes * grad_accum
    stats.examples = steps * stats.global_batch
    stats.export = export_model(trainer)
    model.config.use_cache = True  # TRL may leave use_cache=False: generate() would be 10x slower
    return stats
