"""Worker: the `sft_checkpoint` and `dpo_checkpoint` assets.

``python -m widen_dag.workers.train sft`` (or ``distill``: the long-CoT baseline)
``python -m widen_dag.workers.train dpo <variant>``

Checkpoints are saved as HF folders (safetensors, tokenizer, chat template) through the
lake's staged folders: a run killed mid-save leaves no checkpoint that looks complete. Each
carries ``widen_dag_checkpoint.json``: the config, the content hashes of the data it was
trained on, and its metrics, which `widen-dag trace` reads back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from widen_dag.reporting.markdown import json_value, md
from widen_dag.reporting.plots import line_plot_png, markdown_image
from widen_dag.storage.artifacts import (
    MANIFEST,
    ModelLocation,
    cache_root,
    checkpoint_dir,
    checkpoint_location,
    checkpoint_parts,
    local_model,
    read_manifest,
    read_model_provenance,
    resolve_model,
    write_manifest,
)
from widen_dag.train.remote_state import lake_sync_callback, restore_latest
from widen_dag.train.sft import train_sft
from widen_dag.train.trainer import TrainStats, local_weights_sum, model_device, resolve_device, save_export
from widen_dag.workers.common import Worker, check_memory, open_worker, process_rank


def _load(model: ModelLocation, device: str, *, frozen_base: bool = False):
    """Tokenizer and weights, left where they load (CPU): the Trainer moves them to the device
    accelerate gives this rank (cuda:<local rank>), so ranks never pile onto GPU 0. Loaded once
    the launch's distributed state exists (``load_causal_lm``): FSDP ranks > 0 hold no weights
    until sharding broadcasts rank 0's, ZeRO-3 partitions them as they load; bf16 on CUDA but
    for a DDP full fine-tune's fp32 master weights."""
    from transformers import AutoTokenizer

    from widen_dag.train.trainer import load_causal_lm

    kwargs = {"revision": model.revision, "trust_remote_code": model.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    weights = load_causal_lm(model.name_or_path, device, frozen=frozen_base, **kwargs)
    return weights, tokenizer


def _train_kwargs(profile) -> dict[str, Any]:
    """What SFT and DPO take alike from ``train``: accumulation, checkpointing, LoRA."""
    t = profile.train
    # Under FSDP (CUDA or CPU), activation checkpointing is FSDP's own (launch/accelerate/fsdp.yaml):
    # the Trainer's must stay off.
    checkpointing = False if t.distributed == "fsdp" and t.num_processes > 1 else t.gradient_checkpointing
    return {
        "grad_accum": t.gradient_accumulation_steps,
        "gradient_checkpointing": checkpointing,
        "lora": t.lora.model_dump() if t.lora.enabled else None,
        "report_to": t.report_to,
    }


TRACKING_FOLDER = "tensorboard"  # inside a checkpoint: its run's TensorBoard event files


def _tracking_dir(name: str) -> str | None:
    """A fresh local folder for this run's TensorBoard event files (rank 0 writes them; ``_save``
    moves them into the checkpoint)."""
    return tempfile.mkdtemp(prefix=f"widen-dag-{name}-tb-") if process_rank() == 0 else None


def _placement(model) -> list[dict[str, Any]]:
    """Every rank's process index, device and the sum of the weights it holds (its shards under
    FSDP), gathered to all ranks: the report shows that each rank trained on its own device, and
    the saved checkpoint can be checked against what the ranks held."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    given = "cpu" if state.device.type == "cpu" else str(state.device)  # accelerate says cpu:0 to every CPU rank
    mine = {
        "rank": state.process_index,
        "local_rank": state.local_process_index,
        "device": given,
        "model_device": model_device(model),
        "weights_sum": local_weights_sum(model),
    }
    return gather_object([mine]) if state.num_processes > 1 else [mine]


def _save(
    worker: Worker, name: str, stats: TrainStats, tokenizer, manifest: dict[str, Any], tracking_dir: str | None = None
) -> str:
    """Rank 0 writes the checkpoint (stage, publish) with its run's TensorBoard event files in
    ``tensorboard/``; every rank has already taken part in gathering a sharded model's state
    dict (``stats.export``)."""
    assert stats.export is not None
    if process_rank() > 0:  # under accelerate, rank 0 alone writes the checkpoint
        return checkpoint_dir(worker.lake, name)
    with worker.lake.staged_dir(*checkpoint_parts(name), marker=MANIFEST) as out:
        save_export(stats.export, out)
        tokenizer.save_pretrained(out)
        if tracking_dir and any(Path(tracking_dir).iterdir()):
            shutil.copytree(tracking_dir, Path(out) / TRACKING_FOLDER)
        write_manifest(out, manifest)
    if tracking_dir:
        shutil.rmtree(tracking_dir, ignore_errors=True)
    return checkpoint_dir(worker.lake, name)


def _tracking_metadata(profile, path: str) -> dict[str, Any]:
    """Where the run's curves are: the checkpoint's TensorBoard folder (``tensorboard --logdir``)
    and the other trackers the profile reports to."""
    out: dict[str, Any] = {"report_to": ", ".join(profile.train.report_to) or "(none)"}
    if "tensorboard" in profile.train.report_to:
        out["tensorboard_dir"] = f"{path.rstrip('/')}/{TRACKING_FOLDER}"
    return out


@contextlib.contextmanager
def trainer_state_dir(worker: Worker, name: str, run: dict[str, Any]) -> Iterator[tuple[str, list[Any]]]:
    """Where the Trainer keeps its step checkpoints, and the callbacks that keep them: the lake
    folder ``trainer_state/<name>/<run key>``, the key a hash of everything that defines the run
    (data versions, base, config). Kept when the run dies, so the retry resumes; removed once
    the checkpoint is published. State of other runs of the same name is stale and removed
    first. On an object-store lake the Trainer writes to a local cache folder (shared by the
    ranks of a node), each step checkpoint is uploaded as it is saved, and the newest one is
    downloaded before training: a retry on another machine resumes too."""
    key = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]
    lake = worker.lake
    if not lake.is_local:
        parts = ("trainer_state", name, key)
        local = cache_root() / "trainer_state" / name / key
        if process_rank() == 0:
            for stale in lake.children("trainer_state", name):
                if stale != key:
                    lake.remove_dir("trainer_state", name, stale)
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True, exist_ok=True)
            step = restore_latest(lake, parts, local)
            if step is not None:
                worker.log(f"{name}: Trainer state of step {step} downloaded from {lake.uri(*parts)}")
        _barrier()
        yield str(local), [lake_sync_callback(lake, parts)]
        if process_rank() == 0:
            lake.remove_dir(*parts)
            shutil.rmtree(local, ignore_errors=True)
        return
    root = Path(lake.dir_path("trainer_state", name))
    path = root / key
    if process_rank() == 0:
        for stale in root.glob("*"):
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
    yield str(path), []
    if process_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


def _barrier() -> None:
    """Ranks > 0 wait until rank 0 has prepared the shared state folder."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # cpu=True on a CPU machine: otherwise the shared state comes up non-distributed (gloo needs it).
        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def _curve(losses: list[tuple[int, float]], title: str) -> dict:
    png = line_plot_png({"loss": [(float(s), v) for s, v in losses]}, title, "step", "loss")
    return md(markdown_image(png, title))


def run_sft(worker: Worker, dataset: str = "sft_dataset", name: str = "sft") -> dict:
    """SFT of the student on ``dataset`` (messages), saved as checkpoint ``name``."""
    profile = worker.profile
    cfg = profile.train.sft
    device = resolve_device(profile.train.device)
    data = worker.lake.read_table(dataset)
    if data.is_empty():
        raise ValueError(f"{dataset} is empty: nothing to train on")
    rows = [{"prompt": [m[0]], "completion": [m[1]]} for m in data["messages"].to_list()]
    check_memory(profile, "sft")
    student = resolve_model(profile, worker.lake, "student")
    source = student.describe()
    model, tokenizer = _load(student, device, frozen_base=profile.train.lora.enabled)
    from widen_dag.train.preference import chat_length

    lengths = [chat_length(tokenizer, r["prompt"] + r["completion"]) for r in rows]
    truncated = sum(n > cfg.max_length for n in lengths)
    inputs = {dataset: worker.lake.table_sha256(dataset)}
    run = {"inputs": inputs, "base": source, "config": cfg.model_dump(), "seed": profile.train.seed}
    tracking_dir = _tracking_dir(name)
    with trainer_state_dir(worker, name, run) as (state, state_callbacks):
        stats = train_sft(
            model,
            tokenizer,
            rows,
            output_dir=state,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            epochs=cfg.epochs,
            warmup_ratio=cfg.warmup_ratio,
            group_by_length=cfg.group_by_length,
            scheduler="cosine",
            device=device,
            seed=profile.train.seed,
            on_log=worker.log,
            checkpoint_every=profile.train.checkpoint_every,
            callbacks=state_callbacks,
            tracking_dir=tracking_dir,
            **_train_kwargs(profile),
        )
        if stats.resumed_from_step:
            worker.log(f"{name}: resumed from the Trainer checkpoint at step {stats.resumed_from_step}")
    manifest = {
        "kind": name,
        "base": source,
        # What the base model was made from (a GGUF file's sha256, a bootstrap's seed), so lineage
        # reaches past the student folder.
        "base_provenance": read_model_provenance(student.name_or_path) if student.is_local else None,
        "inputs": inputs,
        "config": cfg.model_dump(),
        "rows": len(rows),
        "problem_ids": data["problem_id"].to_list(),
        "metrics": {"final_loss": stats.final_loss, "tokens_per_s": stats.tokens_per_s},
    }
    placement = _placement(model)
    path = _save(worker, name, stats, tokenizer, manifest, tracking_dir)
    return {
        "path": str(path),
        "base_model": source,
        "device": device,
        "train_rows": len(rows),
        "truncated_rows": truncated,
        "steps": stats.steps,
        "processes": stats.processes,
        "global_batch": stats.global_batch,
        "rank_placement": json_value(placement),
        "lora": profile.train.lora.enabled,
        "resumed_from_step": stats.resumed_from_step or 0,
        "train_seconds": round(stats.seconds, 1),
        "torch_threads": stats.torch_threads,
        "tokens_per_s": round(stats.tokens_per_s, 1),
        "final_loss": stats.final_loss,
        "loss_curve": _curve(stats.losses, f"{name} SFT loss"),
        **_tracking_metadata(profile, path),
        "input_data_versions": json_value(inputs),
        "config": json_value(cfg.model_dump()),
    }


def _reward_curves(stats: TrainStats, variant: str) -> dict:
    """DPO's implicit rewards per logged step: chosen, rejected and their margin (left axis' units:
    beta x log-ratio) and the share of pairs ranked right (accuracy)."""
    series = {f"rewards/{k}": [(float(s), v) for s, v in pts] for k, pts in stats.reward_curves.items()}
    png = line_plot_png(series, f"DPO ({variant}) rewards", "step", "reward / accuracy")
    return md(markdown_image(png, f"DPO ({variant}) rewards"))


def pair_rows(pairs: pl.DataFrame, balanced: bool) -> list[dict[str, Any]]:
    chosen = pairs.filter(pl.col("pairing") == ("balanced" if balanced else "default"))
    return chosen.select("problem_id", "prompt", "chosen", "rejected").to_dicts()


def run_dpo(worker: Worker, variant: str) -> dict:
    from widen_dag.train.dpo import train_dpo

    profile = worker.profile
    cfg = profile.train.dpo
    if variant not in cfg.variants:
        raise ValueError(f"unknown DPO variant {variant!r}: the profile defines {', '.join(cfg.variants)}")
    v = cfg.variants[variant]
    check_memory(profile, "dpo")
    device = resolve_device(profile.train.device)
    sft_uri = checkpoint_location(profile, worker.lake, "sft")
    sft_path = sft_uri.name_or_path
    sft = local_model(sft_uri, worker.lake)  # downloaded into the local cache from an object-store lake
    rows = pair_rows(worker.lake.read_table("preference_pairs"), v.balanced)
    lora = profile.train.lora.enabled
    model, tokenizer = _load(sft, device, frozen_base=lora)
    # The reference is the SFT model, frozen; with LoRA it is the model with the adapter off (no copy).
    ref_model = None if lora else _load(sft, device, frozen_base=True)[0]
    sft_manifest = read_manifest(sft_path) or {}
    inputs = {"preference_pairs": worker.lake.table_sha256("preference_pairs"), "sft_checkpoint": sft_manifest["inputs"]}
    run = {
        "inputs": inputs,
        "config": cfg.model_dump(exclude={"variants"}),
        "variant": v.model_dump(),
        "seed": profile.train.seed,
    }
    tracking_dir = _tracking_dir(f"dpo-{variant}")
    with trainer_state_dir(worker, f"dpo-{variant}", run) as (state, state_callbacks):
        stats = train_dpo(
            model,
            ref_model,
            tokenizer,
            rows,
            output_dir=state,
            beta=cfg.beta,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            epochs=cfg.epochs,
            label_smoothing=v.label_smoothing,
            sft_weight=v.sft_weight,
            prefix_mask=v.prefix_mask,
            warmup_ratio=cfg.warmup_ratio,
            device=device,
            seed=profile.train.seed,
            on_log=worker.log,
            checkpoint_every=profile.train.checkpoint_every,
            precompute_ref_log_probs=cfg.precompute_ref_log_probs,
            group_by_length=cfg.group_by_length,
            callbacks=state_callbacks,
            tracking_dir=tracking_dir,
            **_train_kwargs(profile),
        )
        if stats.resumed_from_step:
            worker.log(f"dpo-{variant}: resumed from the Trainer checkpoint at step {stats.resumed_from_step}")
    manifest = {
        "kind": "dpo",
        "variant": variant,
        "base": sft_path,
        "base_provenance": sft_manifest.get("base_provenance"),
        "inputs": inputs,
        "config": {**cfg.model_dump(exclude={"variants"}), **v.model_dump()},
        "rows": len(rows),
        "problem_ids": [r["problem_id"] for r in rows],
        "metrics": {"final_loss": stats.final_loss, "s_per_step": stats.s_per_step},
    }
    placement = _placement(model)
    path = _save(worker, f"dpo-{variant}", stats, tokenizer, manifest, tracking_dir)
    return {
        "path": str(path),
        "variant": variant,
        "device": device,
        "pairs": len(rows),
        "steps": stats.steps,
        "processes": stats.processes,
        "global_batch": stats.global_batch,
        "rank_placement": json_value(placement),
        "lora": lora,
        "resumed_from_step": stats.resumed_from_step or 0,
        "truncated_pairs": stats.truncated_pairs,
        "masked_prefix_tokens": stats.masked_prefix_tokens,
        "train_seconds": round(stats.seconds, 1),
        "torch_threads": stats.torch_threads,
        "s_per_step": round(stats.s_per_step, 3),
        "final_loss": stats.final_loss,
        "rewards_accuracy": stats.rewards_accuracy,
        "loss_curve": _curve(stats.losses, f"DPO ({variant}) loss"),
        "reward_curves": _reward_curves(stats, variant),
        **_tracking_metadata(profile, path),
        "input_data_versions": json_value(inputs),
        "config": json_value(manifest["config"]),
    }


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in ("sft", "distill", "dpo") or (args[0] == "dpo" and len(args) < 2):
        raise SystemExit("usage: python -m widen_dag.workers.train sft | distill | dpo <variant>")
    with open_worker() as worker:
        if args[0] in ("sft", "distill"):
            meta = run_sft(worker) if args[0] == "sft" else run_sft(worker, "distill_dataset", "distill")
            worker.pipes.report_asset_materialization(metadata=meta, data_version=_version(meta))
        else:
            if len(args) != 2:
                raise SystemExit("one DPO variant per run: its asset partition")
            meta = run_dpo(worker, args[1])
            worker.pipes.report_asset_materialization(metadata=meta, data_version=_version(meta))


def _version(meta: dict) -> str:
    return hashlib.sha256(
        json.dumps([meta["path"], meta["input_data_versions"], meta["final_loss"]], default=str).encode()
    ).hexdigest()[:16]


if __name__ == "__main__":
    main()
