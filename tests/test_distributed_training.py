"""Training under `accelerate launch --num_processes 2` on CPU (gloo): the real worker command,
steps from the global batch, one device per rank, rank 0 alone reporting and writing; DDP and
accelerate's FSDP2 (the shipped fsdp.yaml), each ending in an HF folder that holds the weights
the ranks trained."""

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


def _profile(student: str, dpo_batch: int = DPO_BATCH, **train):
    data = load_profile("tiny").model_dump()
    data["models"]["student"] = {"source": "path", "name": student}
    data["train"].update({"device": "cpu", "num_processes": 2, "checkpoint_every": 0, **train})
    data["train"]["sft"].update({"batch_size": SFT_BATCH, "epochs": SFT_EPOCHS, "max_length": 128, "learning_rate": 1e-3})
    data["train"]["dpo"].update({"batch_size": dpo_batch, "epochs": 1.0, "max_length": 160, "learning_rate": 1e-4})
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


def _holds_what_the_ranks_held(path, placement: list[dict], base, *, sharded: bool) -> None:
    """The saved folder reloads with the weights the ranks reported holding after training: under
    FSDP2 each rank's dim-0 shard of every parameter (torch.chunk, as FSDP2's Shard(0)), under DDP
    the whole model on every rank; every tensor trained a little away from ``base`` and no further
    (a rank that trained from empty weights would be far off)."""
    import torch
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(path)
    start = AutoModelForCausalLM.from_pretrained(base).state_dict()
    ranks = sorted(placement, key=lambda p: p["rank"])
    sums = [0.0] * len(ranks)
    for name, tensor in saved.named_parameters():
        values = tensor.detach().double()
        parts = torch.chunk(values, len(ranks)) if sharded else [values] * len(ranks)
        for r, part in enumerate(parts):
            sums[r] += float(part.sum())
        moved = float((tensor.detach() - start[name]).abs().max())
        assert 0 < moved < 0.02, (name, moved)
    for held, rank in zip(sums, ranks, strict=True):
        assert math.isclose(held, rank["weights_sum"], rel_tol=1e-9, abs_tol=1e-6), (held, rank)


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
    _holds_what_the_ranks_held(checkpoint_dir(lake, "sft"), placement, tiny_checkpoint, sharded=False)

    (dpo,) = run_worker(tmp_path, profile, lake, "dpo_checkpoint", "dpo", "dpo", partition="dpo")
    assert dpo["processes"] == 2 and dpo["steps"] == math.ceil(PAIRS / (DPO_BATCH * 2)) == 2
    assert sorted(p["rank"] for p in dpo["rank_placement"]) == [0, 1]
    assert read_manifest(checkpoint_dir(lake, "dpo-dpo"))["kind"] == "dpo"
    _reloads_and_generates(checkpoint_dir(lake, "dpo-dpo"))


@pytest.mark.slow
def test_fsdp_sft_and_dpo_on_two_cpu_ranks_save_the_weights_the_ranks_held(tiny_checkpoint, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_training_data(lake)
    # One DPO step: policy and reference are the same SFT weights there, so the loss is exactly ln 2
    # on every rank, unless a rank's reference is not the SFT model (ranks > 0 load it empty).
    profile = _profile(str(tiny_checkpoint), dpo_batch=3, distributed="fsdp")
    assert scaleout.accelerate_args(profile, "train")[:2] == ["--config_file", "fsdp"]  # the GPU node's config file

    (sft,) = run_worker(tmp_path, profile, lake, "sft_checkpoint", "sft")
    assert sft["processes"] == 2 and sft["steps"] == 5
    assert sorted(p["rank"] for p in sft["rank_placement"]) == [0, 1]
    assert sft["final_loss"] is not None  # 5 steps, fewer than the profile's log_every
    _holds_what_the_ranks_held(checkpoint_dir(lake, "sft"), sft["rank_placement"], tiny_checkpoint, sharded=True)
    _reloads_and_generates(checkpoint_dir(lake, "sft"))

    (dpo,) = run_worker(tmp_path, profile, lake, "dpo_checkpoint", "dpo", "dpo", partition="dpo")
    assert dpo["processes"] == 2 and dpo["steps"] == 1
    assert dpo["final_loss"] == pytest.approx(math.log(2), abs=1e-5)
    _holds_what_the_ranks_held(checkpoint_dir(lake, "dpo-dpo"), dpo["rank_placement"], checkpoint_dir(lake, "sft"), sharded=True)


FSDP_RESUME = """
import json, sys
from accelerate import PartialState
from transformers import AutoTokenizer, TrainerCallback
from widen_dag.train.sft import train_sft
from widen_dag.train.trainer import load_causal_lm

checkpoint, out, mode, report = sys.argv[1:5]
model = load_causal_lm(checkpoint, "cpu")  # what the worker's _load does, after the process group exists
params = list(model.parameters())
rank = PartialState().process_index
loaded = {"on_meta": all(p.is_meta for p in params), "bytes": sum(p.numel() * p.element_size() for p in params if not p.is_meta)}


class Die(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if mode == "die" and state.global_step == 3:
            raise SystemExit(3)


rows = [
    {"prompt": [{"role": "user", "content": f"What is {i} + 2?"}], "completion": [{"role": "assistant", "content": f"{i + 2}"}]}
    for i in range(8)
]
tok = AutoTokenizer.from_pretrained(checkpoint)
stats = train_sft(model, tok, rows, output_dir=out, learning_rate=1e-3, batch_size=2, max_length=64, max_steps=4,
                  checkpoint_every=2, device="cpu", callbacks=[Die()])
with open(f"{report}-{rank}.json", "w") as f:
    json.dump({**loaded, "resumed_from_step": stats.resumed_from_step, "steps": stats.steps}, f)
"""


@pytest.mark.slow
def test_fsdp_ranks_above_0_load_no_weights_and_a_killed_run_resumes_from_sharded_step_checkpoints(tiny_checkpoint, tmp_path):
    import json
    import os
    import sys

    from transformers import AutoModelForCausalLM

    script = tmp_path / "fsdp_resume.py"
    script.write_text(FSDP_RESUME)
    flags = scaleout.accelerate_args(_profile(str(tiny_checkpoint), distributed="fsdp"), "train")
    argv = [sys.executable, "-m", "widen_dag.launch.accelerate_launch", *flags, "--num_processes", "2", str(script)]
    out, report = tmp_path / "state", tmp_path / "report"

    def launch(mode: str) -> subprocess.CompletedProcess:
        args = [*argv, str(tiny_checkpoint), str(out), mode, str(report)]
        return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=dict(os.environ))

    killed = launch("die")
    assert killed.returncode != 0
    step2 = out / "checkpoint-2"
    assert sorted(p.name for p in (step2 / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (step2 / "model.safetensors").exists()  # each rank wrote its shard; nothing gathered on rank 0

    resumed = launch("resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in (0, 1)]
    assert all(r["resumed_from_step"] == 2 and r["steps"] == 4 for r in ranks), ranks
    full = sum(p.numel() * p.element_size() for p in AutoModelForCausalLM.from_pretrained(tiny_checkpoint).parameters())
    assert ranks[0] == {**ranks[0], "on_meta": False, "bytes": full}  # rank 0 alone holds the weights ...
    assert ranks[1] == {**ranks[1], "on_meta": True, "bytes": 0}  # ... until sharding broadcasts them
