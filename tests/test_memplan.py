"""`widen-dag plan`: GPU memory per stage from the model's config alone, and the refusal."""

from __future__ import annotations

import pytest

from widen_dag import cli
from widen_dag.launch import memplan
from widen_dag.profiles import load_profile, parse_profile

LLAMA = "llama3_1_8b_planning"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # The shipped config.json is all the plan needs: no hub, no weights.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _with(name: str, **sections) -> object:
    data = load_profile(name).model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return parse_profile(data)


def test_the_8b_size_comes_from_the_shipped_config_file():
    shape = memplan.model_shape(load_profile(LLAMA).models.student)
    assert shape.params == 8_030_261_248  # Llama-3.1-8B, counted on the meta device
    assert shape.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


def test_plan_for_the_8b_profile_prints_every_stage_and_exits_0(capsys):
    assert cli.main(["plan", "--profile", LLAMA]) == 0
    out = capsys.readouterr().out
    for stage in memplan.STAGES:
        assert f"| {stage} |" in out
    assert "NO" not in out and "fsdp, 4 process(es)" in out


def test_an_8b_full_fine_tune_on_one_24_gib_gpu_exits_1_with_the_numbers(capsys):
    assert cli.main(["plan", "--profile", LLAMA, "--gpus", "1", "--gpu-memory-gib", "24"]) == 1
    err = capsys.readouterr().err
    assert "does not fit: sft: needs 144.0 GiB per GPU on 1 GPU(s)" in err and "24.0 GiB available" in err
    assert "optimizer 59.8" in err and "dpo: needs" in err
    assert "tensor_parallel_size=2 x data_parallel_size=1 needs 2 GPUs, 1 given" in err


def test_a_worker_refuses_the_stage_before_loading_with_the_stage_named():
    profile = load_profile(LLAMA)
    with pytest.raises(memplan.PlanError, match=r"refusing to start: dpo: needs .* on 2 GPU"):
        memplan.check_stage(profile, "dpo", gpus=2, gpu_memory_gib=40)
    assert memplan.check_stage(profile, "sft", gpus=4, gpu_memory_gib=80).fits


def test_lora_trains_the_adapter_only_and_dpo_holds_no_reference_copy():
    full = memplan.stage_plan(load_profile(LLAMA), "dpo", gpus=1)
    lora = memplan.stage_plan(_with(LLAMA, train={"distributed": "ddp", "lora": {"enabled": True, "r": 16}}), "dpo", gpus=1)
    assert "reference" in full.parts and "reference" not in lora.parts
    assert lora.parts["optimizer"] < full.parts["optimizer"] / 50
    assert any("LoRA r=16" in n for n in lora.notes)


def test_two_vllm_engines_in_one_process_may_not_each_take_most_of_the_gpu():
    qwen = load_profile("qwen2_5_1_5b_math")  # policy and critic engines during search
    assert memplan.stage_plan(qwen, "search").fits
    greedy = _with("qwen2_5_1_5b_math", generation={"gpu_memory_utilization": 0.85})
    plan = memplan.stage_plan(greedy, "search")
    assert not plan.fits and "2 vLLM engines" in plan.verdict()


def test_cpu_stages_are_not_checked():
    assert all(p is None for _, p in memplan.plan(load_profile("tiny")))
