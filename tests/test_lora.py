"""LoRA through peft: SFT then DPO (no reference copy) by the real workers; the merged
checkpoint is a plain HF model that evaluation (transformers) and vLLM load."""

from __future__ import annotations

import subprocess

import pytest

from tests.pipes_files import pipes_env, reports
from tests.test_distributed_training import write_training_data
from widen_dag.domains.base import Problem
from widen_dag.launch import scaleout
from widen_dag.profiles import ProfileError, load_profile, parse_profile
from widen_dag.storage.artifacts import checkpoint_dir
from widen_dag.storage.lake import Lake
from widen_dag.train.trainer import lora_config


def _profile(student: str, **lora):
    data = load_profile("tiny").model_dump()
    data["models"]["student"] = {"source": "path", "name": student}
    data["train"].update({"device": "cpu", "checkpoint_every": 0, "lora": {"enabled": True, "r": 8, "alpha": 16, **lora}})
    data["train"]["sft"].update({"batch_size": 2, "epochs": 1.0, "max_length": 128, "learning_rate": 5e-3})
    data["train"]["dpo"].update({"batch_size": 2, "epochs": 1.0, "max_length": 160, "learning_rate": 5e-3})
    return parse_profile(data)


def test_lora_settings_become_trls_peft_config_and_need_ddp(tiny_checkpoint):
    cfg = lora_config(_profile(str(tiny_checkpoint), target_modules=["q_proj", "v_proj"]).train.lora.model_dump())
    assert (cfg.r, cfg.lora_alpha, sorted(cfg.target_modules)) == (8, 16, ["q_proj", "v_proj"])
    assert lora_config({"enabled": False}) is None
    data = _profile(str(tiny_checkpoint)).model_dump()
    data["train"]["distributed"] = "fsdp"
    with pytest.raises(ProfileError, match="train.lora.enabled needs train.distributed: ddp"):
        parse_profile(data)


def _weights(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(f"{path}/model.safetensors")


@pytest.mark.slow
def test_lora_sft_and_dpo_checkpoints_are_merged_models_that_evaluation_and_vllm_load(tiny_checkpoint, tmp_path):
    import torch

    from widen_dag.evaluate import sample_and_score
    from widen_dag.llm import create_backend

    lake = Lake(str(tmp_path / "lake"))
    write_training_data(lake)
    profile = _profile(str(tiny_checkpoint))
    for asset, args, partition in (("sft_checkpoint", ("sft",), None), ("dpo_checkpoint", ("dpo", "dpo"), "dpo")):
        env, messages = pipes_env(tmp_path / asset, profile, lake.root, asset, partition)
        proc = subprocess.run(scaleout.worker_argv("train", *args), env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        (meta,) = reports(messages)
        assert meta["lora"] is True

    base, sft, dpo = (
        _weights(str(tiny_checkpoint)),
        _weights(checkpoint_dir(lake, "sft")),
        _weights(checkpoint_dir(lake, "dpo-dpo")),
    )
    assert set(sft) == set(base) == set(dpo)  # merged: the base model's tensors, no lora_A/lora_B, no adapter files
    changed = [k for k in base if not torch.equal(base[k], sft[k])]
    assert changed and all("proj" in k for k in changed)  # only the adapted linear layers moved
    assert any(not torch.equal(sft[k], dpo[k]) for k in sft)

    problems = [Problem(f"p{i}", "arithmetic", f"{i} + 3", str(i + 3)) for i in range(3)]
    for name in ("transformers", "vllm"):
        backend = create_backend(
            name,
            checkpoint_dir(lake, "dpo-dpo"),
            device="cpu",
            seed=0,
            max_model_len=512,
            max_num_seqs=16,
            cpu_kvcache_gib=1,
            enforce_eager=True,
            block_size=32,
        )
        try:
            rows = sample_and_score(backend, problems, n=1, temperature=0.0, top_p=1.0, max_tokens=16)
        finally:
            backend.close()
        assert len(rows) == 3 and all(r["n_tokens"] > 0 for r in rows), name
