"""Child processes for the fault-injection tests: each kills itself with SIGKILL at a chosen
point (``python -m tests.reliability.fault_child <fault> <folder>``)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sql_mid_write(folder: Path) -> None:
    """Run the SQL models; die after the bytes of `preference_pairs` are written, before the rename."""
    from tests.lakes import build_small_lake
    from widen_dag.datasets import sql as sqlmodels
    from widen_dag.storage import lake as lake_module

    lake = build_small_lake(folder)
    real_replace = lake_module.os.replace

    def replace_or_die(src, dst):
        if "preference_pairs" in str(dst):
            _die()  # the temporary file is fully written; the publishing rename never happens
        return real_replace(src, dst)

    lake_module.os.replace = replace_or_die  # type: ignore[assignment]
    models = sqlmodels.load_models()
    for _ in sqlmodels.run_models(lake, models, list(models), {"sft_selection": "longest"}):
        pass


def checkpoint_mid_save(folder: Path) -> None:
    """Publish a checkpoint through Lake.staged_dir; die after half its files are written."""
    from widen_dag.storage.lake import Lake

    lake = Lake(str(folder / "lake"))
    with lake.staged_dir("checkpoints", "sft") as out:
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"\0" * 4096)
        _die()
        (out / "widen_dag_manifest.json").write_text("{}")


def train(folder: Path, kill_at: int) -> None:
    """Train the tiny test model for 8 steps with Trainer checkpoints every 2 steps; with
    ``kill_at`` > 0 die at that step. Writes the final weights' checksum and resume step."""
    import torch
    from transformers import TrainerCallback

    from tests.reliability.tiny_training import TOTAL_STEPS, rows, tiny_model
    from widen_dag.train.sft import train_sft

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if kill_at and state.global_step == kill_at:
                _die()

    model, tokenizer = tiny_model(folder)
    stats = train_sft(
        model,
        tokenizer,
        rows(),
        output_dir=str(folder / "trainer_state"),
        learning_rate=3e-3,
        batch_size=4,
        max_length=128,
        max_steps=TOTAL_STEPS,
        scheduler="linear",
        device="cpu",
        seed=0,
        log_every=1,
        checkpoint_every=2,
        callbacks=[KillAt()],
    )
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    (folder / "result.json").write_text(
        json.dumps(
            {
                "resumed_from_step": stats.resumed_from_step,
                "weights": weights.tolist()[:2000],
                "steps": [s for s, _ in stats.losses],
            }
        )
    )


if __name__ == "__main__":
    fault, target = sys.argv[1], Path(sys.argv[2])
    if fault == "sql":
        sql_mid_write(target)
    elif fault == "checkpoint":
        checkpoint_mid_save(target)
    elif fault == "train":
        train(target, int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown fault {fault!r}")
