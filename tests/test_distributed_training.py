"""Training under `accelerate launch --num_processes 2` on CPU (gloo): the real worker command,
steps from the global batch, one device per rank, rank 0 alone reporting and writing."""

from __future__ import annotations

import math
import subprocess

import polars as pl
import pytest

from tests.pipes_files import pipes_env, reports
from widen_dag.launch import scaleout
from widen_dag.profiles import load_profile, parse_profile
from widen_dag.storage.artifacts import checkpoint_dir, read_manifest
from widen_dag.storage.lake import Lake

SFT_ROWS, SFT_EPOCHS, SFT_BATCH = 10, 2.0, 2
PAIRS, DPO_BATCH = 6, 2


def _profile(student: str, **train):
    data = load_profile("tiny").model_dump()
    data["models"]["student"] = {"source": "path", "name": student}
    data["train"].update({"device": "cpu", "num_processes": 2, "checkpoint_every": 0, **train})
    data["train"]["sft"].update({"batch_size": SFT_BATCH, "epochs": SFT_EPOCHS, "max_length": 128, "learning_rate": 1e-3})
    data["train"]["dpo"].update({"batch_size": DPO_BATCH, "epochs": 1.0, "max_length": 160, "learning_rate": 1e-4})
    return parse_profile(data)


def write_training_data(lake: Lake) -> None:
    user = [{"role": "user", "content": f"What is {i} + 3?"} for i in range(SFT_ROWS)]
    answer = [
        {"role": "assistant", "content": f"<thinking>{i} + 3 = {i + 3}</thinking><answer>The answer is: {i + 3}</answer>"}
        for i in range(SFT_ROWS)
    ]
    lake.write_table(
        "sft_dataset",
        pl.DataFrame(
            {"problem_id": [f"p{i}" for i in range(SFT_ROWS)], "messages": [[u, a] for u, a in zip(user, answer, strict=True)]}
        ),
    )
    shared = "<thinking>Let me add. "
    lake.write_table(
        "preference_pairs",
        pl.DataFrame(
            {
                "problem_id": [f"p{i}" for i in range(PAIRS)],
                "pairing": ["default"] * PAIRS,
                "prompt": [[user[i]] for i in range(PAIRS)],
                "chosen": [
                    [{"role": "assistant", "content": shared + f"{i + 3}</thinking><answer>{i + 3}</answer>"}]
                    for i in range(PAIRS)
                ],
                "rejected": [
                    [{"role": "assistant", "content": shared + f"{i + 4}</thinking><answer>{i + 4}</answer>"}]
                    for i in range(PAIRS)
                ],
            }
        ),
    )


def run_worker(tmp_path, profile, lake: Lake, asset: str, *args: str, partition: str | None = None) -> list[dict]:
    env, messages = pipes_env(tmp_path / f"pipes-{asset}", profile, lake.root, asset, partition)
    argv = scaleout.worker_argv(
        "train", *args, num_processes=profile.train.num_processes, accelerate_flags=scaleout.accelerate_args(profile, "train")
    )
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return reports(messages)


def _reloads_and_generates(path: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("What is 2 + 3?", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_sft_and_dpo_under_accelerate_two_processes_step_by_the_global_batch(tiny_checkpoint, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_training_data(lake)
    profile = _profile(str(tiny_checkpoint))
    assert scaleout.accelerate_args(profile, "train") == ["--multi_gpu"]  # torchrun, gloo on CPU

    (sft,) = run_worker(tmp_path, profile, lake, "sft_checkpoint", "sft")  # one report: rank 0's
    assert sft["processes"] == 2 and sft["global_batch"] == SFT_BATCH * 2
    assert sft["steps"] == math.ceil(SFT_ROWS * SFT_EPOCHS / (SFT_BATCH * 2)) == 5  # one process would take 10
    placement = sft["rank_placement"]
    assert sorted(p["rank"] for p in placement) == [0, 1]
    assert all(p["model_device"] == p["device"] for p in placement), placement  # each rank trained where accelerate put it
    assert read_manifest(checkpoint_dir(lake, "sft"))["rows"] == SFT_ROWS
    assert sorted(p.name for p in (tmp_path / "lake" / "checkpoints").iterdir()) == ["sft"]  # no second copy, no staging
    _reloads_and_generates(checkpoint_dir(lake, "sft"))

    (dpo,) = run_worker(tmp_path, profile, lake, "dpo_checkpoint", "dpo", "dpo", partition="dpo")
    assert dpo["processes"] == 2 and dpo["steps"] == math.ceil(PAIRS / (DPO_BATCH * 2)) == 2
    assert sorted(p["rank"] for p in dpo["rank_placement"]) == [0, 1]
    assert read_manifest(checkpoint_dir(lake, "dpo-dpo"))["kind"] == "dpo"
    _reloads_and_generates(checkpoint_dir(lake, "dpo-dpo"))
