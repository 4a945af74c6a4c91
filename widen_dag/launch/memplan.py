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
* vLLM engines each get their own share: ``models.<role>.gpu_memory_utilization`` (unset:
  ``generation.gpu_memory_utilization``) of the GPU, which must hold that engine's weights, its
  KV cache (``models.<role>.kv_cache_gib`` where set, else one ``max_model_len`` sequence) and
  the 2 GiB overhead of its own process; one engine that does not fit its share fails the stage.

Host RAM per rank (what each process holds on the host at its peak; a pod's limit covers all its
ranks together), with ``P`` parameters, as ``widen_dag.train.trainer`` loads and saves:

* every process: ``HOST_PROCESS_BYTES`` (Python, torch, CUDA runtime, tokenizer, data).
* DDP on CUDA: every rank loads the whole model on the host before the Trainer moves it to its
  GPU: fp32 for a full fine-tune (4 B/param, its master weights), bf16 for a LoRA base; DPO adds
  the bf16 reference (2 B/param), loaded beside it.
* FSDP (``fsdp_cpu_ram_efficient_loading``): rank 0 loads bf16 (2 B/param; DPO: + the bf16
  reference beside it), accelerate upcasts it to fp32 (4 B/param) to broadcast into the shards,
  and the final checkpoint is gathered there in fp32 (4 B/param, cast to bf16 tensor by
  tensor); ranks > 0 build the model on the meta device and hold no weights.
* ZeRO-3: weights are partitioned as they load (each rank reads one checkpoint file at a time,
  ``CHECKPOINT_FILE_BYTES`` at most); rank 0 gathers the final checkpoint in bf16 (2 B/param).
* training on CPU holds the whole training state on the host: fp32 weights, gradients and Adam
  (16 B/param, divided by the processes under FSDP), activations in fp32, the fp32 reference.
* vLLM on CUDA: per engine one checkpoint file in flight while weights stream to the GPU; on CPU
  the engine's weights (generation dtype) and its KV cache (``kv_cache_gib`` or
  ``cpu_kvcache_gib``).

On CPU, a time estimate per stage from the profile's sizes and throughput constants measured on
this project's 2-core CPU machine (``CPU_TRAIN_PARAM_TOKENS_PER_S``,
``CPU_GENERATE_PARAM_TOKENS_PER_S``): estimates, to tell minutes from days, not predictions.
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
HOST_PROCESS_BYTES = 2 * GIB  # a worker process before weights: Python, torch, CUDA runtime, data
CHECKPOINT_FILE_BYTES = 5 * GIB  # the largest safetensors file of a sharded checkpoint (HF's default shard size)
# Throughput on the project's 2-core CPU machine (shared, loaded: idle is faster), as parameters x
# tokens per second, so one constant covers every model size:
# - training (fp32 forward + backward + AdamW step): a 60M-parameter Llama at batch 4 x 256 tokens
#   ran 66-117 tokens/s (4.0e9-7.0e9 param-tokens/s; load average 6-11 on 2 cores); issue #26
#   measured 27 tokens/s distilling the 135M SmolLM2 (3.6e9). 4.5e9 is the middle of those runs.
# - generation: vLLM's CPU engine answered greedily at ~85 tokens/s on the 135M SmolLM2 (issue #26),
#   1.1e10 param-tokens/s for one stream; batching many sequences only shortens the estimate.
CPU_TRAIN_PARAM_TOKENS_PER_S = 4.5e9
CPU_GENERATE_PARAM_TOKENS_PER_S = 1.1e10
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
    if ref.source == "gguf" and not ref.config_file:
        return _gguf_config(ref)
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


def _gguf_config(ref: ModelRef) -> tuple[str, dict[str, Any]]:
    """A GGUF model's config from the file's own header (transformers' GGUF reader; no weights
    are de-quantized), so a CPU user can plan before the models stage converts it."""
    from transformers import AutoConfig

    from widen_dag.launch.failures import Unrecoverable
    from widen_dag.storage.artifacts import gguf_file

    try:
        path = gguf_file(ref, "models.<role>")
    except Unrecoverable as err:
        raise PlanError(f"{err.cause} ({err.fix})") from None
    data = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    data.pop("quantization_config", None)
    return f"{path.name} (GGUF header)", data


def model_shape(ref: ModelRef, *, config: dict[str, Any] | None = None) -> ModelShape:
    """Parameters and dimensions of ``ref`` from its config, on accelerate's meta device."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    source, data = ("profile", config) if config is not None else _config_dict(ref)
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
        name=f"{ref.name or ref.source} ({source})",
        params=params,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        kv_bytes_per_token=2 * text.num_hidden_layers * kv_heads * head_dim * 2,
        linear_shapes=linears,
    )


@dataclass
class HostPlan:
    """Host RAM of one stage: bytes per rank by component (rank 0, the largest) and of each
    other rank, against the host's (a pod's) memory for all ranks together."""

    ranks: int
    parts: dict[str, float]  # rank 0's peak by component
    other_rank: float | None = None  # each rank > 0 (None: one rank, or the same as rank 0)
    budget: float | None = None  # bytes of the host / pod for all ranks
    notes: list[str] = field(default_factory=list)

    @property
    def rank0(self) -> float:
        return sum(self.parts.values())

    @property
    def total(self) -> float:
        others = self.other_rank if self.other_rank is not None else self.rank0
        return self.rank0 + others * (self.ranks - 1)

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget


@dataclass
class StagePlan:
    """One stage's estimate per GPU against its budget (no GPU on CPU), with its host RAM and,
    on CPU, a time estimate."""

    stage: str
    model: str
    gpus: int  # 0: the stage runs on CPU
    parts: dict[str, float]  # bytes per GPU by component
    budget: float  # bytes per GPU the stage may use
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    host: HostPlan | None = None
    seconds: float | None = None  # CPU time estimate for ``time_unit``
    time_unit: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits_gpu(self) -> bool:
        return self.problem is None and (self.gpus == 0 or self.total <= self.budget)

    @property
    def fits(self) -> bool:
        return self.fits_gpu and (self.host is None or self.host.fits)

    def verdict(self) -> str:
        if self.problem:
            return self.problem
        if not self.fits_gpu:
            return (
                f"{self.stage}: needs {self.total / GIB:.1f} GiB per GPU on {self.gpus} GPU(s) "
                f"({', '.join(f'{k} {v / GIB:.1f}' for k, v in self.parts.items() if v)}), "
                f"{self.budget / GIB:.1f} GiB available"
            )
        h = self.host
        assert h is not None and h.budget is not None
        others = f", {h.other_rank / GIB:.1f} GiB on each of ranks 1-{h.ranks - 1}" if h.other_rank is not None else ""
        return (
            f"{self.stage}: host RAM {h.total / GIB:.1f} GiB for {h.ranks} rank(s) "
            f"(rank 0 {h.rank0 / GIB:.1f} GiB: {', '.join(f'{k} {v / GIB:.1f}' for k, v in h.parts.items() if v)}{others}), "
            f"{h.budget / GIB:.1f} GiB of host memory"
        )


def _activations(shape: ModelShape, batch: int, length: int, checkpointing: bool) -> float:
    tokens = batch * length
    working = 34 * tokens * shape.hidden
    stored = shape.layers * tokens * shape.hidden * 2 + working if checkpointing else shape.layers * working
    return stored + tokens * shape.vocab * 12


def _training_host(profile: Profile, stage: str, shape: ModelShape, ranks: int, on_cpu: bool, activations: float) -> HostPlan:
    """Host RAM per rank of SFT / DPO (formulas in the module docstring)."""
    t = profile.train
    p = shape.params
    dpo_reference = stage == "dpo" and not t.lora.enabled
    ranks = ranks if t.num_processes > 1 else 1
    parts: dict[str, float] = {"process": HOST_PROCESS_BYTES}
    other: float | None = None
    if on_cpu:
        shard = ranks if t.distributed == "fsdp" and ranks > 1 else 1
        if t.lora.enabled:
            trainable = shape.lora_params(t.lora.r, t.lora.target_modules)
            parts["weights"] = 4 * p + 16 * trainable
        else:
            parts["weights"] = 16 * p / shard  # fp32 weights, gradients, Adam
            if shard > 1:  # rank 0 loads the whole fp32 model before sharding
                parts["loading"] = max(0.0, 4 * p - parts["weights"])
        parts["activations"] = 2 * activations  # fp32 on CPU
        if dpo_reference:
            parts["reference"] = 4 * p / shard
        if shard > 1:
            other = HOST_PROCESS_BYTES + 16 * p / shard + 2 * activations + (4 * p / shard if dpo_reference else 0)
        notes = [f"training state on the host ({t.distributed}, {ranks} process(es), fp32)"]
    elif ranks > 1 and t.distributed == "fsdp":
        parts["weights"] = 4 * p  # bf16 load (+ bf16 reference) < fp32 upcast = fp32 export gather
        other = HOST_PROCESS_BYTES
        notes = ["FSDP: rank 0 alone loads the weights (fp32 upcast and final gather 4 B/param); ranks > 0 hold none"]
    elif ranks > 1 and t.distributed == "deepspeed_zero3":
        parts["weights"] = 2 * p  # the bf16 gather of the final checkpoint
        other = HOST_PROCESS_BYTES + min(2 * p, CHECKPOINT_FILE_BYTES)
        notes = ["ZeRO-3: weights partitioned as they load; rank 0 gathers the final checkpoint in bf16"]
    else:
        parts["weights"] = (2 if t.lora.enabled else 4) * p
        if dpo_reference:
            parts["reference"] = 2 * p
        notes = ["DDP: every rank loads the whole model on the host before moving it to its GPU"]
    return HostPlan(ranks, parts, other, notes=notes)


def training_plan(profile: Profile, stage: str, shape: ModelShape, gpus: int, gpu_bytes: float) -> StagePlan:
    """SFT or DPO of the student on ``gpus`` processes, one per GPU (``gpus`` 0: on CPU, with
    ``train.num_processes`` processes)."""
    from accelerate.commands.estimate import estimate_training_usage

    t = profile.train
    settings = t.sft if stage == "sft" else t.dpo
    on_cpu = gpus == 0
    ranks = t.num_processes if on_cpu else gpus
    sharded = t.distributed in ("fsdp", "deepspeed_zero3")
    shard = gpus if sharded and not on_cpu else 1
    default_checkpointing = not on_cpu  # trainer_defaults: on for CUDA, off on CPU
    checkpointing = t.gradient_checkpointing if t.gradient_checkpointing is not None else default_checkpointing
    batch = settings.batch_size * (2 if stage == "dpo" else 1)
    activations = _activations(shape, batch, settings.max_length, checkpointing)
    notes = [f"{t.distributed}, {ranks} process(es), per-device batch {settings.batch_size} x {settings.max_length} tokens"]
    parts: dict[str, float] = {}
    if not on_cpu:
        if t.lora.enabled:
            trainable = shape.lora_params(t.lora.r, t.lora.target_modules)
            usage = estimate_training_usage(trainable * 4, "bfloat16")
            parts = {
                "weights": 2 * shape.params + usage["model"],
                "gradients": usage["gradients"],
                "optimizer": usage["optimizer"],
            }
        else:
            usage = estimate_training_usage(shape.params * 4, "bfloat16")
            parts = {
                "weights": usage["model"] / shard,
                "gradients": usage["gradients"] / shard,
                "optimizer": usage["optimizer"] / shard,
            }
        parts["activations"] = activations
        if stage == "dpo" and not t.lora.enabled:
            parts["reference"] = 2 * shape.params / shard
        parts["overhead"] = OVERHEAD_BYTES
    if t.lora.enabled:
        notes.append(f"LoRA r={t.lora.r}: {shape.lora_params(t.lora.r, t.lora.target_modules) / 1e6:.1f}M trainable parameters")
    plan = StagePlan(stage, shape.name, gpus, parts, gpu_bytes, notes)
    plan.host = _training_host(profile, stage, shape, ranks, on_cpu, activations)
    if on_cpu:
        # Upper bound: every row at max_length. DPO: chosen + rejected, and the reference's forward (~1/3 of a step).
        tokens = 1000 * settings.max_length * settings.epochs * ((2 + 2 / 3) if stage == "dpo" else 1)
        plan.seconds = shape.params * tokens / (CPU_TRAIN_PARAM_TOKENS_PER_S * ranks)
        unit = "pairs" if stage == "dpo" else "rows"
        plan.time_unit = f"per 1,000 {unit} of {settings.max_length} tokens, {settings.epochs:g} epoch(s)"
    return plan


@dataclass
class EngineShare:
    """One vLLM engine's share of each of its GPUs and what it must hold there."""

    role: str
    shape: ModelShape
    share: float
    share_field: str  # the profile field the share comes from
    kv_bytes: float  # the KV cache: kv_cache_gib where set, else one max_model_len sequence
    kv_field: str
    weights: float  # per GPU (/ tensor parallel)

    def need(self) -> float:
        return self.weights + self.kv_bytes + OVERHEAD_BYTES


def _engines(profile: Profile, roles: list[tuple[str, ModelRef]], shapes: list[ModelShape]) -> list[EngineShare]:
    gen = profile.generation
    tp = gen.tensor_parallel_size
    out = []
    for (role, ref), shape in zip(roles, shapes, strict=True):
        own = ref.gpu_memory_utilization
        share_field = f"models.{role}.gpu_memory_utilization" if own else "generation.gpu_memory_utilization"
        one_seq = shape.kv_bytes_per_token * gen.max_model_len / tp
        kv, kv_field = (ref.kv_cache_gib * GIB, f"models.{role}.kv_cache_gib") if ref.kv_cache_gib else (one_seq, "")
        out.append(EngineShare(role, shape, own or gen.gpu_memory_utilization, share_field, kv, kv_field, 2 * shape.params / tp))
    return out


def generation_plan(
    profile: Profile, stage: str, roles: list[tuple[str, ModelRef]], shapes: list[ModelShape], gpus: int, gpu_bytes: float
) -> StagePlan:
    """vLLM engines (policy and critic for search, the student for evaluation) on ``gpus``
    (0: on CPU), each in its own share of the GPU."""
    gen = profile.generation
    tp = gen.tensor_parallel_size
    engines = _engines(profile, roles, shapes)
    name = " + ".join(s.name for s in shapes)
    if gpus == 0:
        return _cpu_generation_plan(profile, stage, name, engines)
    parts = {
        "weights": sum(e.weights for e in engines),
        "kv_cache": sum(e.kv_bytes for e in engines),
        "overhead": OVERHEAD_BYTES * len(engines),
    }
    plan = StagePlan(stage, name, tp, parts, sum(e.share for e in engines) * gpu_bytes)
    for e in engines:
        room = e.share * gpu_bytes - e.weights - OVERHEAD_BYTES
        one_seq = e.shape.kv_bytes_per_token * gen.max_model_len / tp
        seqs = int(room // one_seq) if one_seq and room > 0 else 0
        kv = (
            f"KV {e.kv_field} {e.kv_bytes / GIB:.1f}"
            if e.kv_field
            else f"KV of one {gen.max_model_len}-token sequence {e.kv_bytes / GIB:.1f}"
        )
        plan.notes.append(
            f"{e.role} engine: {e.share_field}={e.share:g} of {gpu_bytes / GIB:g} GiB = {e.share * gpu_bytes / GIB:.1f} GiB "
            f"for weights {e.weights / GIB:.1f} + {kv} + overhead {OVERHEAD_BYTES / GIB:.0f}: "
            f"{'fits' if e.need() <= e.share * gpu_bytes else 'DOES NOT FIT'} (room for {seqs} sequences at full length)"
        )
    plan.notes.append(f"vLLM TP={tp}, {gen.data_parallel_size} engine replica(s) per model")
    need = tp * gen.data_parallel_size
    short = [e for e in engines if e.need() > e.share * gpu_bytes]
    if gpus < need:
        plan.gpus = gpus
        plan.problem = (
            f"{stage}: generation.tensor_parallel_size={tp} x data_parallel_size={gen.data_parallel_size} "
            f"needs {need} GPUs, {gpus} given"
        )
    elif sum(e.share for e in engines) > 1.0:
        plan.problem = (
            f"{stage}: {len(engines)} vLLM engines on one GPU take "
            f"{' + '.join(f'{e.share_field}={e.share:g}' for e in engines)} > 1 of it"
        )
    elif short:
        e = short[0]
        plan.problem = (
            f"{stage}: the {e.role} engine ({e.shape.name}) gets {e.share_field}={e.share:g} of a {gpu_bytes / GIB:g} GiB GPU, "
            f"{e.share * gpu_bytes / GIB:.1f} GiB, for {e.weights / GIB:.1f} GiB of weights + {e.kv_bytes / GIB:.1f} GiB of KV cache "
            f"+ {OVERHEAD_BYTES / GIB:.0f} GiB overhead; raise {e.share_field} (and lower the other engine's) or use a larger GPU"
        )
    # Host: each engine streams its weights to the GPU one checkpoint file at a time.
    plan.host = HostPlan(
        gen.data_parallel_size,  # one process per replica, each with its engines
        {
            "process": HOST_PROCESS_BYTES * len(engines),
            "weights in flight": sum(min(2 * e.shape.params, CHECKPOINT_FILE_BYTES) for e in engines),
        },
        notes=["vLLM streams weights to the GPU one checkpoint file at a time"],
    )
    return plan


def _cpu_generation_plan(profile: Profile, stage: str, name: str, engines: list[EngineShare]) -> StagePlan:
    gen = profile.generation
    weight_bytes = 4 if gen.dtype == "float32" else 2
    parts = {
        "process": HOST_PROCESS_BYTES * len(engines),
        "weights": sum(weight_bytes * e.shape.params for e in engines),
        "kv_cache": sum(e.kv_bytes if e.kv_field else gen.cpu_kvcache_gib * GIB for e in engines),
    }
    host = HostPlan(gen.data_parallel_size, parts, notes=[f"{len(engines)} engine(s) per replica on CPU"])
    plan = StagePlan(stage, name, 0, {}, 0.0, host=host)
    # Generated tokens, an upper bound: every search rollout runs to max_path_tokens, every answer to max_new_tokens.
    policy = engines[0].shape.params
    if stage == "search":
        tokens = 100 * profile.search.rollouts * profile.search.max_path_tokens
        plan.time_unit = f"per 100 problems ({profile.search.rollouts} rollouts of up to {profile.search.max_path_tokens} tokens)"
    else:
        answers = profile.eval.n_samples() + int(profile.eval.greedy)
        tokens = 100 * answers * profile.eval.max_new_tokens
        plan.time_unit = f"per 100 problems and checkpoint ({answers} answers of up to {profile.eval.max_new_tokens} tokens)"
    plan.seconds = policy * tokens / CPU_GENERATE_PARAM_TOKENS_PER_S
    return plan


def _engine_models(profile: Profile, stage: str) -> list[tuple[str, ModelRef]]:
    m = profile.models
    if stage == "search":
        return [("policy", m.policy)] + ([("critic", m.critic)] if m.critic is not None else [])
    return [("student", m.student)]


def _bootstrap_config(profile: Profile) -> dict[str, Any]:
    """The tiny bootstrapped Llama's config (widen_dag.train.bootstrap.new_model), from the profile."""
    b = profile.models.bootstrap
    return {
        "model_type": "llama",
        "vocab_size": b.vocab_size,
        "hidden_size": b.hidden_size,
        "intermediate_size": b.intermediate_size,
        "num_hidden_layers": b.num_layers,
        "num_attention_heads": b.num_heads,
        "num_key_value_heads": b.num_heads,
        "max_position_embeddings": b.max_position_embeddings,
        "tie_word_embeddings": True,
    }


def stage_plan(
    profile: Profile,
    stage: str,
    *,
    gpus: int | None = None,
    gpu_memory_gib: float | None = None,
    host_memory_gib: float | None = None,
    shapes: dict[str, ModelShape] | None = None,
) -> StagePlan:
    """The plan of one stage: GPU memory per GPU where it runs on CUDA, host RAM per rank (checked
    against ``host_memory_gib`` when given), and on CPU a time estimate."""
    training = stage in ("sft", "dpo")
    device = profile.train.device if training else profile.generation.device
    on_cpu = device == "cpu"
    gpu_bytes = (gpu_memory_gib or profile.runtime.gpu_memory_gib) * GIB
    shapes = shapes if shapes is not None else _SHAPES

    def shape(ref: ModelRef) -> ModelShape:
        key = ref.model_dump_json()
        if key not in shapes:
            config = _bootstrap_config(profile) if ref.source == "bootstrap" else None
            shapes[key] = model_shape(ref, config=config)
        return shapes[key]

    if training:
        n = 0 if on_cpu else (gpus or profile.train.num_processes)
        p = training_plan(profile, stage, shape(profile.models.student), n, gpu_bytes)
    else:
        n = 0 if on_cpu else (gpus or profile.generation.tensor_parallel_size * profile.generation.data_parallel_size)
        roles = _engine_models(profile, stage)
        p = generation_plan(profile, stage, roles, [shape(r) for _, r in roles], n, gpu_bytes)
    if p.host is not None and host_memory_gib is not None:
        p.host.budget = host_memory_gib * GIB
    return p


def plan(
    profile: Profile, *, gpus: int | None = None, gpu_memory_gib: float | None = None, host_memory_gib: float | None = None
) -> list[tuple[str, StagePlan]]:
    return [
        (s, stage_plan(profile, s, gpus=gpus, gpu_memory_gib=gpu_memory_gib, host_memory_gib=host_memory_gib)) for s in STAGES
    ]


_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def pod_memory_gib(profile: Profile) -> float | None:
    """``runtime.k8s.memory`` (a Kubernetes quantity: 128Gi, 500M, ...) in GiB; None without k8s."""
    k8s = profile.runtime.k8s
    if k8s is None:
        return None
    text = k8s.memory.strip()
    for suffix, factor in _QUANTITY.items():
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor / GIB
    if text.replace(".", "", 1).isdigit():
        return float(text) / GIB
    raise PlanError(f"runtime.k8s.memory: {k8s.memory!r} is not a Kubernetes memory quantity (e.g. 128Gi)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"~{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"~{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"~{seconds / 3600:.1f} h"
    return f"~{seconds / 86400:.1f} days"


def render(rows: list[tuple[str, StagePlan]], gpu_memory_gib: float, host_memory_gib: float | None = None) -> str:
    cols = ["weights", "gradients", "optimizer", "activations", "reference", "kv_cache", "overhead"]
    head = ["stage", "GPUs", *cols, "total", "budget", "fits"]
    lines = [
        f"GiB per GPU ({gpu_memory_gib:g} GiB GPUs; estimates, see widen_dag/launch/memplan.py)",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    notes = []
    for stage, p in rows:
        if p.gpus == 0:
            lines.append(f"| {stage} | cpu | " + " | ".join("" for _ in cols) + " | | | no GPU: host RAM below |")
        else:
            cells = [f"{p.parts[c] / GIB:.1f}" if c in p.parts else "" for c in cols]
            fits = "yes" if p.fits_gpu else ("NO" if p.problem is None else "NO (see below)")
            lines.append(
                f"| {stage} | {p.gpus} | " + " | ".join(cells) + f" | {p.total / GIB:.1f} | {p.budget / GIB:.1f} | {fits} |"
            )
        notes += [f"- {stage}: {n}" for n in [f"model {p.model}", *p.notes, *(p.host.notes if p.host else [])]]
    limit = f"{host_memory_gib:g} GiB host" if host_memory_gib is not None else "no host limit given (--host-memory-gib)"
    head = ["stage", "ranks", "rank 0", "each other rank", "all ranks", "limit", "fits"]
    lines += [
        "",
        f"Host RAM, GiB per rank at its peak ({limit}; estimates)",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for stage, p in rows:
        h = p.host
        if h is None:
            continue
        other = f"{h.other_rank / GIB:.1f}" if h.other_rank is not None else ("" if h.ranks == 1 else f"{h.rank0 / GIB:.1f}")
        fits = "" if h.budget is None else ("yes" if h.fits else "NO")
        budget = "" if h.budget is None else f"{h.budget / GIB:g}"
        lines.append(f"| {stage} | {h.ranks} | {h.rank0 / GIB:.1f} | {other} | {h.total / GIB:.1f} | {budget} | {fits} |")
    timed = [(s, p) for s, p in rows if p.seconds is not None]
    if timed:
        lines += ["", "CPU time, an estimate from this project's 2-core CPU throughput (memplan.CPU_*_PER_S; idle is faster):"]
        lines += [f"- {s}: {_duration(p.seconds)} {p.time_unit}" for s, p in timed]
    return "\n".join(lines + [""] + notes)


def check_stage(profile: Profile, stage: str, *, gpus: int, gpu_memory_gib: float) -> StagePlan | None:
    """What a worker calls before loading anything: raises PlanError naming the stage and the
    numbers when the stage cannot fit the GPUs it actually has (None where it runs on CPU)."""
    p = stage_plan(profile, stage, gpus=gpus, gpu_memory_gib=gpu_memory_gib)
    if p.gpus == 0:
        return None
    if not p.fits_gpu:
        raise PlanError(f"refusing to start: {p.verdict()} (see `widen-dag plan`)")
    return p


def visible_gpus() -> tuple[int, float]:
    """(GPUs this process may use, GiB of the smallest), for the workers' check."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0.0
    n = torch.cuda.device_count()
    return n, min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) / GIB
