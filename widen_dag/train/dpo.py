"""Fine-grained DPO (SPEC.md section 3) on TRL's DPOTrainer.

A variant is configuration only:
* cDPO, ``-(1-eps) log s(h) - eps log s(-h)``, is built from TRL's losses: TRL 1.16's "sigmoid"
  loss ignores ``label_smoothing`` (its cDPO branch is gone), so ``dpo_loss_terms`` combines
  "sigmoid" and "robust" (which does use it) into exactly that formula;
* the joint objective adds TRL's "sft" loss to that list with weight alpha;
* prefix masking needs per-pair label masks, which TRL lacks: ``PrefixMaskCollator`` drops the
  tokens that chosen and rejected share at the start of their completions from the loss
  mask of both sequences, for policy and reference alike. With summed log-probs the shared
  prefix cancels in the DPO margin, so the mask changes the DPO term by nothing (up to float
  error); it matters for the SFT term, whose token mean then covers only the tokens after
  the paths diverge. tests/test_train.py checks both facts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from trl.trainer.dpo_trainer import DataCollatorForPreference

from widen_dag.train.batching import length_grouped
from widen_dag.train.preference import chat_length, common_prefix_length, dpo_loss_terms, validate_pairs
from widen_dag.train.trainer import (
    TrainStats,
    export_model,
    init_distributed,
    logging_callback,
    lora_config,
    num_processes,
    optimizer_steps,
    quiet,
    shard_reference,
    tracking,
    train_resuming,
    trainer_defaults,
)


class PrefixMaskCollator(DataCollatorForPreference):
    """TRL's preference collator, with the shared completion prefix removed from the loss mask."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        mask = out["completion_mask"]
        batch = len(examples)
        width = mask.size(1)
        for i, ex in enumerate(examples):
            shared = common_prefix_length(ex["chosen_ids"], ex["rejected_ids"])
            if shared == 0:
                continue
            start = len(ex["prompt_ids"])
            stop = min(start + shared, width)
            mask[i, start:stop] = 0
            mask[batch + i, start:stop] = 0
        return out


def dpo_config(
    output_dir: str,
    *,
    beta: float,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    label_smoothing: float,
    sft_weight: float,
    steps: int,
    warmup_ratio: float,
    device: str,
    seed: int,
    log_every: int,
    checkpoint_every: int = 0,
    grad_accum: int = 1,
    gradient_checkpointing: bool | None = None,
    precompute_ref_log_probs: bool = False,
    report_to: list[str] | None = None,
):
    from trl import DPOConfig

    losses, weights = dpo_loss_terms(label_smoothing, sft_weight)
    return DPOConfig(
        output_dir=output_dir,
        beta=beta,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        max_length=max_length,
        truncation_mode="keep_start",
        max_steps=steps,
        warmup_steps=int(warmup_ratio * steps),
        lr_scheduler_type="cosine",
        label_smoothing=label_smoothing,
        loss_type=losses,
        loss_weights=weights,
        precompute_ref_log_probs=precompute_ref_log_probs,
        **trainer_defaults(
            device,
            seed,
            log_every,
            checkpoint_every,
            gradient_checkpointing=gradient_checkpointing,
            grad_accum=grad_accum,
            report_to=report_to,
        ),
    )


def train_dpo(
    model: Any,
    ref_model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    output_dir: str,
    beta: float,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    epochs: float,
    label_smoothing: float,
    sft_weight: float,
    prefix_mask: bool,
    warmup_ratio: float = 0.03,
    device: str = "cpu",
    seed: int = 0,
    on_log: Callable[[str], None] | None = None,
    checkpoint_every: int = 0,
    grad_accum: int = 1,
    gradient_checkpointing: bool | None = None,
    lora: dict[str, Any] | None = None,
    precompute_ref_log_probs: bool = False,
    callbacks: list[Any] | None = None,
    report_to: list[str] | None = None,
    tracking_dir: str | None = None,
    group_by_length: bool = False,
) -> TrainStats:
    """DPO of ``model`` against ``ref_model`` (frozen). With ``lora`` on, pass ``ref_model=None``:
    the reference is the model with its adapter switched off, so no second copy is held.
    ``batch_size`` is per device; steps come from the global batch. ``report_to``: the profile's
    trackers (TensorBoard event files into ``tracking_dir``). ``group_by_length``: batches of pairs
    of similar length in random order (``widen_dag.train.batching``), less padding."""
    import datasets
    from trl import DPOTrainer

    validate_pairs(rows)
    init_distributed(device)
    processes = num_processes()
    steps = optimizer_steps(len(rows), epochs, batch_size, processes, grad_accum)
    tracker_names, tracker_callbacks = tracking(report_to, tracking_dir)
    config = dpo_config(
        output_dir,
        beta=beta,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        label_smoothing=label_smoothing,
        sft_weight=sft_weight,
        steps=steps,
        warmup_ratio=warmup_ratio,
        device=device,
        seed=seed,
        log_every=max(1, steps // 10),
        checkpoint_every=checkpoint_every,
        grad_accum=grad_accum,
        gradient_checkpointing=gradient_checkpointing,
        precompute_ref_log_probs=precompute_ref_log_probs,
        report_to=tracker_names,
    )
    stats = TrainStats(pairs=len(rows), processes=processes, global_batch=batch_size * processes * grad_accum)

    keep = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    collator = None
    if prefix_mask:
        collator = PrefixMaskCollator(pad_token_id=tokenizer.pad_token_id, max_length=max_length, truncation_mode="keep_start")
    trainer = (length_grouped(DPOTrainer) if group_by_length else DPOTrainer)(
        model=model,
        ref_model=shard_reference(ref_model),
        args=config,
        train_dataset=datasets.Dataset.from_list(keep),
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[logging_callback(stats, on_log), *tracker_callbacks, *(callbacks or [])],
        peft_config=lora_config(lora),
    )
    quiet(trainer)
    for r in keep:  # counted on the untruncated token sequences, so truncation is never silent
        longest = max(chat_length(tokenizer, r["prompt"] + r[k]) for k in ("chosen", "rejected"))
        stats.truncated_pairs += longest > max_length
    if prefix_mask:
        ds = trainer.train_dataset
        stats.masked_prefix_tokens = sum(
            common_prefix_length(c, r) for c, r in zip(ds["chosen_ids"], ds["rejected_ids"], strict=True)
        )
    start = time.perf_counter()
    stats.resumed_from_step = train_resuming(trainer, output_dir)
    stats.seconds = time.perf_counter() - start
    stats.steps = trainer.state.global_step  # what ran, not what was planned
    stats.export = export_model(trainer)
    model.config.use_cache = True
    return stats
