"""GPU memory plan per stage, before anything loads: ``widen-dag plan`` and every worker's refusal.

The model's size comes from its config alone (a config.json shipped beside the profiles, a
local folder's, or the hub's config.json; never weights): transformers builds the model on
accelerate's meta device (``init_empty_weights``) and the parameters are counted there.
Training memory per parameter is accelerate's own estimate (``estimate_training_usage``,
bf16 mixed precision with Adam: fp32 weights 4 B, gradients 6 B, optimizer 8 B); FSDP and
ZeRO-3 divide it by the processes, DDP keeps a full copy per GPU. What this module adds, as
plain formulas (estimates, not measurements):

* activations per GPU (bf16, SDPA attention, per-device batch ``b`` of ``L`` tokens):
  with gradient checkpointing one stored layer input per layer, ``n_layers * b*L*h * 2`` B, plus
  one layer's full working set, ``34 * b*L*h`` B (Korthikanti et al. 2022, without the
  attention-score term that SDPA never stores); without it the working set of every layer;
  plus the logits, ``b*L*V * 12`` B (bf16 logits, their fp32 log-softmax and its gradient).
  DPO runs chosen and rejected together: ``b`` is doubled.
* LoRA: the frozen base in bf16 (2 B/param) plus the training estimate for the adapter's
  parameters only (``r * (in + out)`` per targeted linear layer).
* DPO without LoRA holds the frozen reference in bf16 (sharded like the policy under FSDP /
  ZeRO-3); with LoRA the reference is the base with the adapter off, no copy.
* vLLM, per GPU of an engine (``tensor_parallel_size`` GPUs): bf16 weights / TP, and the KV
  cache, ``2 * layers * kv_heads * head_dim * 2 B`` per token / TP. vLLM refuses to start when
  its share of the GPU (``gpu_memory_utilization``) cannot hold one ``max_model_len``
  sequence, which is the fit test here; the table also shows what all ``max_num_seqs``
  sequences at full length would take and how many of them fit (vLLM pre-empts beyond that).
  Engines in one process (policy and critic) each take their own ``gpu_memory_utilization``.
* a fixed 2 GiB per GPU for the CUDA context, NCCL and allocator slack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from widen_dag.profiles import Profile
from widen_dag.profiles.schema import ModelRef

GIB = 1024**3
OVERHEAD_BYTES = 2 * GIB
STAGES = ("search", "sft", "dpo", "evaluate")
_SHAPES: dict[str, ModelShape] = {}  # per process: a config read once (meta-device build of an 8B model: ~1 s)


class PlanError(RuntimeError):
    """A stage does not fit the GPUs it is given; the message names the stage and the numbers."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model, read from its config."""

    name: str
    params: int
    layers: int
    hidden: int
    vocab: int
    kv_bytes_per_token: int  # bf16 K and V of every layer
    linear_shapes: tuple[tuple[str, int, int], ...] = field(repr=False, default=())  # (name, in, out), lm_head excluded

    def lora_params(self, r: int, targets: list[str] | str) -> int:
        chosen = [(i, o) for n, i, o in self.linear_shapes if targets == "all-linear" or n.rsplit(".", 1)[-1] in targets]
        return sum(r * (i + o) for i, o in chosen)


def _config_dict(ref: ModelRef) -> tuple[str, dict[str, Any]]:
    """The model's config.json as a dict: the shipped/named file, a local folder's, or the hub's."""
    if ref.config_file:
        shipped = Path(str(resources.files("widen_dag.profiles") / "model_configs" / ref.config_file))
        path = shipped if shipped.is_file() else Path(ref.config_file).expanduser()
        if not path.is_file():
            raise PlanError(f"models.*.config_file: {ref.config_file} is neither a shipped model config nor a file")
        return path.name, json.loads(path.read_text())
    if ref.source == "path" and ref.name:
        path = Path(ref.name).expanduser() / "config.json"
        if not path.is_file():
            raise PlanError(f"model folder {ref.name} has no config.json")
        return str(path), json.loads(path.read_text())
    from huggingface_hub import hf_hub_download  # one small JSON file, never weights

    assert ref.name is not None
    try:
        path = hf_hub_download(ref.name, "config.json", revision=ref.revision)
    except Exception as err:  # offline, gated, missing: say which model and what to set instead
        raise PlanError(
            f"cannot read config.json of {ref.name} from the hub ({type(err).__name__}); "
            f"set models.<role>.config_file to a copy of it"
        ) from err
    return "hub config.json", json.loads(Path(path).read_text())


def model_shape(ref: ModelRef, *, config: dict[str, Any] | None = None) -> ModelShape:
    """Parameters and dimensions of ``ref`` from its config, on accelerate's meta device."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    source, data = (ref.name or "model", config) if config is not None else _config_dict(ref)
    data = dict(data)
    cfg = AutoConfig.for_model(data.pop("model_type"), **data)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if getattr(cfg, "tie_word_embeddings", False) and head is not None and head.weight is not embed.weight:
        params -= head.weight.numel()  # tied on load: one matrix, not two
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    linears = tuple(
        (n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head
    )
    return ModelShape(
        name=f"{ref.name or 'model'} ({source})",
        params=params,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        kv_bytes_per_token=2 * text.num_hidden_layers * kv_heads * head_dim * 2,
        linear_shapes=linears,
    )


@dataclass
class StagePlan:
    """One stage's estimate per GPU against its budget."""

    stage: str
    model: str
    gpus: int
    parts: dict[str, float]  # bytes per GPU by component
    budget: float  # bytes per GPU the stage may use
    notes: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.problem is None and self.total <= self.budget

    def verdict(self) -> str:
        if self.problem:
            return self.problem
        return (
            f"{self.stage}: needs {self.total / GIB:.1f} GiB per GPU on {self.gpus} GPU(s) "
            f"({', '.join(f'{k} {v / GIB:.1f}' for k, v in self.parts.items() if v)}), "
            f"{self.budget / GIB:.1f} GiB available"
        )


def _activations(shape: ModelShape, batch: int, length: int, checkpointing: bool) -> float:
    tokens = batch * length
    working = 34 * tokens * shape.hidden
    stored = shape.layers * tokens * shape.hidden * 2 + working if checkpointing else shape.layers * working
    return stored + tokens * shape.vocab * 12


def training_plan(profile: Profile, stage: str, shape: ModelShape, gpus: int, gpu_bytes: float) -> StagePlan:
    """SFT or DPO of the student on ``gpus`` processes, one per GPU."""
    from accelerate.commands.estimate import estimate_training_usage

    t = profile.train
    settings = t.sft if stage == "sft" else t.dpo
    sharded = t.distributed in ("fsdp", "deepspeed_zero3")
    shard = gpus if sharded else 1
    checkpointing = t.gradient_checkpointing if t.gradient_checkpointing is not None else True
    notes = [f"{t.distributed}, {gpus} process(es), per-device batch {settings.batch_size} x {settings.max_length} tokens"]
    if t.lora.enabled:
        trainable = shape.lora_params(t.lora.r, t.lora.target_modules)
        usage = estimate_training_usage(trainable * 4, "bfloat16")
        parts = {"weights": 2 * shape.params + usage["model"], "gradients": usage["gradients"], "optimizer": usage["optimizer"]}
        notes.append(f"LoRA r={t.lora.r}: {trainable / 1e6:.1f}M trainable parameters")
    else:
        usage = estimate_training_usage(shape.params * 4, "bfloat16")
        parts = {
            "weights": usage["model"] / shard,
            "gradients": usage["gradients"] / shard,
            "optimizer": usage["optimizer"] / shard,
        }
    batch = settings.batch_size * (2 if stage == "dpo" else 1)
    parts["activations"] = _activations(shape, batch, settings.max_length, checkpointing)
    if stage == "dpo" and not t.lora.enabled:
        parts["reference"] = 2 * shape.params / shard
    parts["overhead"] = OVERHEAD_BYTES
    return StagePlan(stage, shape.name, gpus, parts, gpu_bytes, notes)


def generation_plan(profile: Profile, stage: str, shapes: list[ModelShape], gpus: int, gpu_bytes: float) -> StagePlan:
    """vLLM engines (policy and critic for search, the student for evaluation) on ``gpus``."""
    gen = profile.generation
    tp = gen.tensor_parallel_size
    share = gen.gpu_memory_utilization
    engines = len(shapes)
    budget = share * gpu_bytes
    weights = sum(2 * s.params for s in shapes) / tp
    one_seq = sum(s.kv_bytes_per_token for s in shapes) * gen.max_model_len / tp
    full = one_seq * gen.max_num_seqs
    parts = {"weights": weights, "kv_cache": one_seq, "overhead": OVERHEAD_BYTES}
    plan = StagePlan(stage, " + ".join(s.name for s in shapes), tp, parts, budget * engines)
    kv_room = plan.budget - weights - OVERHEAD_BYTES
    fit_seqs = int(kv_room // one_seq) if one_seq and kv_room > 0 else 0
    plan.notes.append(
        f"vLLM TP={tp}, {gen.data_parallel_size} engine replica(s); KV for all {gen.max_num_seqs} seqs x "
        f"{gen.max_model_len} tokens would take {full / GIB:.1f} GiB per GPU, room for {fit_seqs} at full length"
    )
    need = tp * gen.data_parallel_size
    if gpus < need:
        plan.gpus = gpus
        plan.problem = (
            f"{stage}: generation.tensor_parallel_size={tp} x data_parallel_size={gen.data_parallel_size} "
            f"needs {need} GPUs, {gpus} given"
        )
    elif engines * share > 1.0:
        plan.problem = (
            f"{stage}: {engines} vLLM engines in one process each take generation.gpu_memory_utilization="
            f"{share} of every GPU ({engines * share:.2f} > 1); lower it to at most {1 / engines:.2f}"
        )
    return plan


def _engine_models(profile: Profile, stage: str) -> list[ModelRef]:
    m = profile.models
    if stage == "search":
        return [m.policy] + ([m.critic] if m.critic is not None else [])
    return [m.student]


def stage_plan(
    profile: Profile,
    stage: str,
    *,
    gpus: int | None = None,
    gpu_memory_gib: float | None = None,
    shapes: dict[str, ModelShape] | None = None,
) -> StagePlan | None:
    """The plan of one stage, or None where it runs on CPU (nothing to check)."""
    training = stage in ("sft", "dpo")
    device = profile.train.device if training else profile.generation.device
    if device == "cpu" or any(
        r.source == "bootstrap" for r in (_engine_models(profile, stage) if not training else [profile.models.student])
    ):
        return None
    gpu_bytes = (gpu_memory_gib or profile.runtime.gpu_memory_gib) * GIB
    shapes = shapes if shapes is not None else _SHAPES

    def shape(ref: ModelRef) -> ModelShape:
        key = ref.model_dump_json()
        if key not in shapes:
            shapes[key] = model_shape(ref)
        return shapes[key]

    if training:
        return training_plan(profile, stage, shape(profile.models.student), gpus or profile.train.num_processes, gpu_bytes)
    n = gpus or profile.generation.tensor_parallel_size * profile.generation.data_parallel_size
    return generation_plan(profile, stage, [shape(r) for r in _engine_models(profile, stage)], n, gpu_bytes)


def plan(profile: Profile, *, gpus: int | None = None, gpu_memory_gib: float | None = None) -> list[tuple[str, StagePlan | None]]:
    return [(s, stage_plan(profile, s, gpus=gpus, gpu_memory_gib=gpu_memory_gib)) for s in STAGES]


def render(rows: list[tuple[str, StagePlan | None]], gpu_memory_gib: float) -> str:
    cols = ["weights", "gradients", "optimizer", "activations", "reference", "kv_cache", "overhead"]
    head = ["stage", "GPUs", *cols, "total", "budget", "fits"]
    lines = [
        f"GiB per GPU ({gpu_memory_gib:g} GiB GPUs; estimates, see widen_dag/launch/memplan.py)",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    notes = []
    for stage, p in rows:
        if p is None:
            lines.append(f"| {stage} | cpu | " + " | ".join("" for _ in cols) + " | | | not checked |")
            continue
        cells = [f"{p.parts[c] / GIB:.1f}" if c in p.parts else "" for c in cols]
        fits = "yes" if p.fits else ("NO" if p.problem is None else "NO (see below)")
        lines.append(f"| {stage} | {p.gpus} | " + " | ".join(cells) + f" | {p.total / GIB:.1f} | {p.budget / GIB:.1f} | {fits} |")
        notes += [f"- {stage}: {n}" for n in [f"model {p.model}", *p.notes]]
    return "\n".join(lines + [""] + notes)


def check_stage(profile: Profile, stage: str, *, gpus: int, gpu_memory_gib: float) -> StagePlan | None:
    """What a worker calls before loading anything: raises PlanError naming the stage and the
    numbers when the stage cannot fit the GPUs it actually has."""
    p = stage_plan(profile, stage, gpus=gpus, gpu_memory_gib=gpu_memory_gib)
    if p is not None and not p.fits:
        raise PlanError(f"refusing to start: {p.verdict()} (see `widen-dag plan`)")
    return p


def visible_gpus() -> tuple[int, float]:
    """(GPUs this process may use, GiB of the smallest), for the workers' check."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0.0
    n = torch.cuda.device_count()
    return n, min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) / GIB
