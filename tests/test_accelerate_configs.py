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
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # rank 0 saves whole weights
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
