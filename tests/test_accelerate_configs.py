"""The accelerate config files shipped for train.distributed, and the launch flags a profile gives."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from widen_dag.launch import scaleout
from widen_dag.profiles import ProfileError, load_profile, parse_profile


@pytest.mark.parametrize(("distributed", "kind"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")])
def test_each_distributed_mode_has_a_config_file_accelerate_reads(distributed, kind):
    path = scaleout.accelerate_config_file(distributed)
    config = load_config_from_file(str(path))
    assert str(config.distributed_type).endswith(kind) and config.mixed_precision == "bf16"
    if distributed == "fsdp":
        assert config.fsdp_config["fsdp_reshard_after_forward"] is True  # FULL_SHARD
        # step checkpoints: each rank saves its own shard, nothing gathered on rank 0 mid-run
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True  # ranks > 0 load no weights
    if distributed == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3


def test_the_8b_profile_launches_fsdp_training_with_its_config_file():
    profile = load_profile("llama3_1_8b_planning")
    flags = scaleout.accelerate_args(profile, "train")
    assert flags == ["--config_file", "fsdp"]  # by name: resolved where the worker runs (a pod has no host paths)
    argv = scaleout.worker_argv(
        "train", "sft", num_processes=profile.train.num_processes, python="python", accelerate_flags=flags
    )
    assert argv == [
        "python",
        "-m",
        "widen_dag.launch.accelerate_launch",
        *flags,
        "--num_processes",
        "4",
        "-m",
        "widen_dag.workers.train",
        "sft",
    ]
    assert scaleout.accelerate_args(profile, "search") == []


def test_an_unknown_distributed_mode_is_refused_with_the_field():
    data = load_profile("tiny").model_dump()
    data["train"]["distributed"] = "zero2"
    with pytest.raises(ProfileError, match="train.distributed"):
        parse_profile(data)


def test_cpu_training_launches_fsdp_with_the_same_config_file_and_refuses_deepspeed():
    data = load_profile("tiny").model_dump()
    data["train"].update({"num_processes": 2, "distributed": "fsdp"})
    assert scaleout.accelerate_args(parse_profile(data), "train") == ["--config_file", "fsdp", "--mixed_precision", "no"]
    data["train"]["distributed"] = "ddp"
    assert scaleout.accelerate_args(parse_profile(data), "train") == ["--multi_gpu"]
    data["train"]["distributed"] = "deepspeed_zero3"
    with pytest.raises(ValueError, match="train.distributed: deepspeed_zero3 runs on CUDA only"):
        scaleout.accelerate_args(parse_profile(data), "train")
