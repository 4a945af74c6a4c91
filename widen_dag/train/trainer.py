"""What SFT and DPO training share: the distributed state started before any model loads,
Trainer defaults (on CPU, off with what TRL turns on by default: bf16 and gradient
checkpointing, ~11x slower here; on CUDA both stay on), optimizer steps from the global batch,
LoRA through peft, the model to save (LoRA merged, shards gathered, bf16 where training ran in
bf16), resume from the newest Trainer checkpoint, one stats type and one logging callback."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REWARD_CURVES = ("chosen", "rejected", "margins", "accuracies")  # TRL's rewards/<key> logs of a DPO run


@dataclass
class TrainStats:
    """What a training run reports, SFT or DPO (the DPO-only fields stay at their defaults for SFT)."""

    steps: int = 0
    examples: int = 0
    tokens: int = 0  # non-padding tokens of the batches trained on, all processes (Trainer's count)
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from_step: int | None = None
    pairs: int = 0
    truncated_pairs: int = 0
    masked_prefix_tokens: int = 0
    rewards_accuracy: float | None = None
    reward_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # DPO: REWARD_CURVES per step
    torch_threads: str = ""  # the torch threads its steps ran with ("1-2": shared the cores a while)
    processes: int = 1  # data-parallel processes the steps were computed for
    global_batch: int = 0  # examples (or pairs) per optimizer step across all processes
    # The model to save once training ends (LoRA merged into the weights) and, under FSDP /
    # ZeRO-3, its full state dict gathered from the shards (None where the model holds it).
    export: tuple[Any, dict | None] | None = field(default=None, repr=False)

    @property
    def s_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None


def init_distributed(device: str) -> None:
    """Start accelerate's state for this launch (process group included) before any model loads,
    so loading can be RAM-efficient: under FSDP with ``fsdp_cpu_ram_efficient_loading``
    transformers fills non-zero ranks with empty weights that accelerate moves to the meta device
    and fills from rank 0 when sharding; under ZeRO-3 the DeepSpeed plugin's ``HfDeepSpeedConfig``
    makes ``from_pretrained`` build the model inside ``deepspeed.zero.Init``, partitioned. The
    Trainer then takes this state (``accelerator_config.use_configured_state``). A no-op in a
    single process; idempotent.

    FSDP on CPU: accelerate turns FSDP on only for accelerator devices (``AcceleratorState``
    sets ``DistributedType.FSDP`` for MULTI_GPU/XPU/...; gloo ranks stay MULTI_CPU and the FSDP
    plugin of the launcher is dropped), while FSDP2 itself (``fully_shard`` on a CPU mesh) runs
    over gloo. So the CPU ranks of an FSDP launch get the FSDP state a GPU launch gets, and train
    through accelerate's own FSDP2 preparation, state-dict gathering and checkpointing: the
    CPU tests run the code path of a GPU node."""
    if num_processes() <= 1:
        return
    import os

    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = Accelerator(cpu=device == "cpu").state
    fsdp_launch = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_launch and state.distributed_type == DistributedType.MULTI_CPU:
        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def sharded_training() -> bool:
    """Whether this launch shards the model (FSDP or DeepSpeed): only after ``init_distributed``."""
    if num_processes() <= 1:
        return False
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    return AcceleratorState().distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def load_dtype(device: str, *, frozen: bool = False):
    """The dtype to load weights in: bf16 on CUDA wherever nothing needs fp32 weights from the
    start (a frozen LoRA base or DPO reference; FSDP, whose preparation upcasts only the
    trainable shards to fp32 master weights; ZeRO-3, whose optimizer keeps the fp32 masters);
    fp32 for a DDP full fine-tune (its parameters are the master weights, under bf16 autocast)
    and on CPU (no bf16 training there)."""
    import torch

    if device != "cuda":
        return torch.float32
    return torch.bfloat16 if frozen or sharded_training() else torch.float32


def loads_empty() -> bool:
    """Whether this rank builds its model without weights: a rank > 0 of an FSDP launch with
    ``fsdp_cpu_ram_efficient_loading``, whose weights accelerate's FSDP2 preparation broadcasts
    from rank 0 into its shards."""
    if num_processes() <= 1:
        return False
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    state = AcceleratorState()
    return (
        state.distributed_type == DistributedType.FSDP
        and bool(state.fsdp_plugin.cpu_ram_efficient_loading)
        and not state.is_main_process
    )


def load_causal_lm(name_or_path: str, device: str, *, frozen: bool = False, **kwargs: Any) -> Any:
    """A causal LM for training, loaded after ``init_distributed``, in ``load_dtype``.

    On the ranks of ``loads_empty`` the parameters stay on the meta device (no host memory,
    nothing read from disk) and only the buffers are built, which FSDP2's preparation keeps:
    transformers' own RAM-efficient path for these ranks fills a full model with zeros instead,
    which measured more host memory than rank 0's load. Rank 0 alone holds the full weights
    until sharding. ZeRO-3: ``from_pretrained`` partitions them as they load (init_distributed
    started the DeepSpeed plugin, whose ``HfDeepSpeedConfig`` turns on ``zero.Init``)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    init_distributed(device)
    dtype = load_dtype(device, frozen=frozen)
    if loads_empty():
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, trust_remote_code=kwargs.get("trust_remote_code", False)
            )
        model.tie_weights()  # from_pretrained ties embeddings when it loads; from_config on meta does not
        return model
    return AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True, dtype=dtype, **kwargs)


def shard_reference(model: Any) -> Any:
    """Under FSDP2, the frozen DPO reference sharded like the policy by accelerate's own
    preparation, which broadcasts rank 0's weights (with ``fsdp_cpu_ram_efficient_loading``
    ranks > 0 loaded it empty). TRL's wrapping (``trl.models.utils.prepare_fsdp``) shards each
    rank's local copy as it is and would leave ranks > 0 with a zero reference; it skips a
    model that is sharded already. Anything else: ``model`` unchanged."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    if model is None or num_processes() <= 1:
        return model
    acc = Accelerator()  # the state init_distributed configured
    if acc.distributed_type != DistributedType.FSDP or acc.state.fsdp_plugin.fsdp_version != 2:
        return model
    model.requires_grad_(False)  # frozen: no fp32 master copy
    return fsdp2_prepare_model(acc, model).eval()


def num_processes() -> int:
    """Data-parallel processes of this launch (``accelerate launch`` / torchrun sets WORLD_SIZE)."""
    import os

    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def optimizer_steps(rows: int, epochs: float, per_device_batch: int, processes: int = 1, grad_accum: int = 1) -> int:
    """Optimizer steps for ``epochs`` passes over ``rows``: each step consumes the global batch,
    per-device batch x processes x gradient accumulation (not the per-device batch: with N
    GPUs that would train N times the configured epochs)."""
    return max(1, math.ceil(rows * epochs / (per_device_batch * processes * grad_accum)))


def lora_config(lora: dict[str, Any] | None):
    """A peft ``LoraConfig`` for TRL's ``peft_config`` from the profile's ``train.lora`` (as a
    dict), or None when LoRA is off."""
    if not lora or not lora.get("enabled"):
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )


def trainer_defaults(
    device: str,
    seed: int,
    log_every: int,
    checkpoint_every: int = 0,
    *,
    gradient_checkpointing: bool | None = None,
    grad_accum: int = 1,
    report_to: list[str] | None = None,
) -> dict[str, Any]:
    """Trainer arguments SFT and DPO share: device switches, seeds, and Trainer checkpoints every
    ``checkpoint_every`` steps (0: none), the newest one kept, so a killed run resumes.

    Gradient checkpointing (unset: on for CUDA, where activations of a 4096-token batch decide
    whether an 8B model fits; off on CPU, where it measured ~11x slower) uses the non-reentrant
    variant, which DDP and frozen LoRA base weights need."""
    on_cpu = device == "cpu"
    checkpointing = (not on_cpu) if gradient_checkpointing is None else gradient_checkpointing
    saving: dict[str, Any] = {"save_strategy": "no"}
    if checkpoint_every > 0:
        saving = {
            "save_strategy": "steps",
            "save_steps": checkpoint_every,
            "save_total_limit": 1,
            "save_only_model": False,
        }  # optimizer, scheduler and RNG states too: an exact resume
    distributed = num_processes() > 1
    return {
        "bf16": False if on_cpu else None,  # TRL turns bf16 on by default, even on CPU
        # Under accelerate launch the state was started before the model loaded (init_distributed).
        **({"accelerator_config": {"use_configured_state": True}} if distributed else {}),
        "include_num_input_tokens_seen": "non_padding",  # tokens/s from the tokens trained on
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
        "gradient_accumulation_steps": grad_accum,
        "use_cpu": on_cpu,
        "report_to": list(report_to or []),
        **saving,
        "logging_steps": log_every,
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


def tracking(report_to: list[str] | None, tracking_dir: str | None) -> tuple[list[str], list[Any]]:
    """(the Trainer's ``report_to``, extra callbacks) for the profile's ``train.report_to``.
    TensorBoard writes its event files into ``tracking_dir`` (the worker saves them beside the
    checkpoint), from rank 0 only; mlflow, wandb and trackio are the Trainer's own integrations,
    configured by their environment variables."""
    import os

    names = [t for t in report_to or [] if t != "tensorboard"]
    callbacks: list[Any] = []
    if "tensorboard" in (report_to or []) and tracking_dir and int(os.environ.get("RANK", "0")) == 0:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=tracking_dir)))
    return names, callbacks


def quiet(trainer: Any) -> None:
    """Drop the Trainer's stdout printer: losses reach Dagster through our own log callback."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_resuming(trainer: Any, output_dir: str) -> int | None:
    """``trainer.train()``, resumed from the newest Trainer checkpoint in ``output_dir`` if one
    exists (a run killed mid-way); returns the step it resumed from, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    return int(Path(last).name.rsplit("-", 1)[-1]) if last else None


def export_model(trainer: Any) -> tuple[Any, dict | None]:
    """The model to save after training, called on every rank (gathering shards is collective).

    FSDP / ZeRO-3: the full state dict is gathered from the shards (rank 0 gets it). Under
    DeepSpeed accelerate gathers through the engine (``zero_gather_16bit_weights_on_model_save``
    and ``_zero3_consolidated_16bit_state_dict`` are the engine's, ``trainer.model_wrapped``;
    ``trainer.model`` is the bare module). LoRA: the adapter is merged into the base weights, so
    the checkpoint is a plain HF model that evaluation and vLLM load like any other. Where
    training ran in bf16 the weights are saved in bf16: fp32 master weights would double every
    checkpoint (32 GB for 8B) for precision the bf16 forward never used."""
    import torch
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        state = acc.get_state_dict(trainer.model_wrapped)
    elif acc.distributed_type == DistributedType.FSDP:
        state = acc.get_state_dict(trainer.model)
    else:
        state = None
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.args.bf16:
        if state is not None:  # rank 0's gathered copy (other ranks get an empty dict), cast tensor by tensor
            for k, v in state.items():
                if v.is_floating_point():
                    state[k] = v.to(torch.bfloat16)
        else:
            model = model.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
    model.config.use_cache = True  # TRL may leave use_cache=False: generate() would be 10x slower
    return model, state


def save_export(export: tuple[Any, dict | None], out: str | Path) -> None:
    """Write ``export_model``'s result as an HF folder (safetensors), on rank 0. The config's
    dtype is the saved weights' (``save_pretrained`` writes the model's own, fp32 for FSDP's
    master weights even when the gathered state dict is bf16)."""
    model, state = export
    model.save_pretrained(out, safe_serialization=True, state_dict=state)
    dtypes = {v.dtype for v in (state or {}).values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model.config.dtype = dtypes.pop()
        model.config.save_pretrained(out)


def model_device(model: Any) -> str:
    """Where a model's weights are (``cuda:1``, ``cpu``), for the per-rank placement report."""
    return str(next(model.parameters()).device)


def local_weights_sum(model: Any) -> float:
    """The sum of the weights this rank holds (its own shards of FSDP's DTensors), in float64:
    a fingerprint to check a saved checkpoint against the ranks' weights."""
    import torch

    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            total += float(local.detach().to("cpu", torch.float64).sum())
    return total


def resolve_device(pref: str) -> str:
    import torch

    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("profile asks for device 'cuda' but torch sees no CUDA device")
    return "cuda" if pref in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def logging_callback(stats: TrainStats, on_log: Callable[[str], None] | None):
    """A Trainer callback that records the loss curve (and DPO's reward accuracy) into ``stats``
    and hands each line to ``on_log`` (the worker's Dagster log), and sets the torch threads to
    this worker's share of a CPU machine before each step (widen_dag.launch.cpus). The last step is always
    logged, so a run shorter than ``logging_steps`` still has a final loss. ``stats.tokens``:
    the non-padding tokens this ``train()`` call trained on (a resumed run counts from where it
    resumed, like its seconds)."""
    from transformers import TrainerCallback

    from widen_dag.launch.cpus import ThreadShare
    from widen_dag.progress import ProgressReporter

    class _Log(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.tokens_at_start = state.num_input_tokens_seen
            self.progress = ProgressReporter(on_log) if on_log else None  # the console's bar (widen_dag.progress)
            self.share = ThreadShare()  # beside another training worker on a CPU machine: half the cores, else all

        def on_step_begin(self, args, state, control, **kwargs):
            self.share.rebalance()

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress:
                self.progress("training steps", state.global_step, state.max_steps)
            if state.global_step >= state.max_steps:
                control.should_log = True

        def on_train_end(self, args, state, control, **kwargs):
            stats.tokens = state.num_input_tokens_seen - self.tokens_at_start
            stats.torch_threads = self.share.span()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stats.losses.append((state.global_step, float(logs["loss"])))
                if logs.get("rewards/accuracies") is not None:
                    stats.rewards_accuracy = float(logs["rewards/accuracies"])
                for key in REWARD_CURVES:  # DPO's implicit rewards, per logged step
                    if logs.get(f"rewards/{key}") is not None:
                        stats.reward_curves.setdefault(key, []).append((state.global_step, float(logs[f"rewards/{key}"])))
                if on_log:
                    on_log(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")

    return _Log()
