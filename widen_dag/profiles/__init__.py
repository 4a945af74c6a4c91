"""Pipeline profiles: typed settings loaded from ``widen_dag/profiles/<name>.yaml``.

``tiny`` (embedded, CPU, no model hub) is the default; ``$WIDEN_DAG_PROFILE`` names another
profile or a path to a YAML file. Every model forbids unknown keys, so a typo fails at load
with the field's dotted name instead of being silently ignored. Defaults follow SPEC.md;
where the paper is silent the value is ours, and a field rather than a constant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILE_DIR = Path(__file__).parent
PROFILE_ENV = "WIDEN_DAG_PROFILE"
DEFAULT_PROFILE = "tiny"
INBOX_DATASET = "inbox"  # reserved dataset name of files dropped into the inbox


class ProfileError(ValueError):
    """A profile that cannot be loaded; the message names the file and the dotted field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArithmeticSource(_Strict):
    kind: Literal["arithmetic"] = "arithmetic"
    n_problems: int = Field(600, gt=0)
    steps: int = Field(2, ge=1, le=6)
    max_operand: int = Field(9, ge=2)
    ops: str = Field("+-*", pattern=r"^[+*-]+$")


class FileSource(_Strict):
    """JSONL or Parquet file(s); field names are configurable per dataset."""

    kind: Literal["file"] = "file"
    path: str
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None
    limit: int | None = Field(None, gt=0)


class PlanBenchSource(_Strict):
    kind: Literal["planbench"] = "planbench"
    path: str
    limit: int | None = Field(None, gt=0)


class HubSource(_Strict):
    """An HF dataset id, for users who are online (never touched by the tiny profile)."""

    kind: Literal["hub"] = "hub"
    name: str
    config: str | None = None
    split: str = "test"
    revision: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    limit: int | None = Field(None, gt=0)


class DatasetConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    domain: Literal["math", "blocksworld", "arithmetic"]
    source: ArithmeticSource | FileSource | PlanBenchSource | HubSource = Field(discriminator="kind")
    shards: int = Field(1, ge=1, le=1000)
    # Which split the dataset's rows may go to: "split" draws a seeded train/eval split.
    role: Literal["train", "eval", "split"] = "split"


class InboxConfig(_Strict):
    """A folder watched by the `problem_inbox` sensor: every new JSONL/Parquet file dropped
    there becomes its own `problem_shards` partition, and search runs for exactly it.

    Writers should write a file elsewhere (or under a dot-name) and rename it in: the
    sensor skips hidden and ``.tmp`` files. ``$WIDEN_DAG_INBOX`` overrides ``path``."""

    path: str = "inbox"
    domain: Literal["math", "blocksworld", "arithmetic"] = "math"
    role: Literal["train", "eval", "split"] = "train"
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None

    def resolved_path(self) -> Path:
        return Path(os.environ.get("WIDEN_DAG_INBOX") or self.path).expanduser()


class ProblemsConfig(_Strict):
    eval_fraction: float = Field(0.25, ge=0.0, le=1.0)
    split_seed: int = 0
    max_question_chars: int = Field(20_000, gt=0)
    max_gold_chars: int = Field(2_000, gt=0)


class ModelRef(_Strict):
    """A model: ``bootstrap`` (built here from synthetic data) or an HF id / local path."""

    source: Literal["bootstrap", "hub", "path"] = "bootstrap"
    name: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _needs_name(self) -> ModelRef:
        if self.source != "bootstrap" and not self.name:
            raise ValueError(f"a {self.source} model needs 'name' (an HF id or a local path)")
        return self


class BootstrapConfig(_Strict):
    """The tiny models of the embedded profile (tokenizer + small Llama), trained here.

    Training length is a number of steps, never a time budget, so that the same seed on the
    same machine gives the same models.
    """

    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(384, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(1024, ge=64)
    train_problems: int = Field(20_000, gt=0)
    steps: int = Field(2, ge=1, le=6)
    max_operand: int = Field(9, ge=2)
    ops: str = Field("+-*", pattern=r"^[+*-]+$")
    policy_steps: int = Field(400, gt=0)
    student_steps: int = Field(60, gt=0)
    # plain: untagged "a + b = c." solutions; direct: tagged thoughts without checks/reflections
    student_style: Literal["plain", "direct"] = "plain"
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(4e-3, gt=0)
    error_rate: float = Field(0.3, ge=0, le=1)
    eval_problems: int = Field(200, gt=0)
    eval_max_tokens: int = Field(200, gt=0)

    @model_validator(mode="after")
    def _head_dim(self) -> BootstrapConfig:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"hidden_size / num_heads must be a whole number >= 32 (vLLM's CPU attention), "
                f"got {self.hidden_size} / {self.num_heads}"
            )
        return self


class ModelsConfig(_Strict):
    policy: ModelRef = ModelRef()
    critic: ModelRef | None = None  # None: the policy also writes checks and reflections
    student: ModelRef = ModelRef()
    bootstrap: BootstrapConfig = BootstrapConfig()


class GenerationConfig(_Strict):
    backend: Literal["vllm", "transformers"] = "vllm"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens_per_node: int = Field(512, gt=0)
    max_model_len: int = Field(4096, gt=0)
    max_num_seqs: int = Field(256, gt=0)
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    cpu_kvcache_gib: float = Field(1.0, gt=0)
    enforce_eager: bool = False  # CPU: skips graph capture, vLLM starts in ~20 s instead of ~60 s
    block_size: int | None = Field(None, gt=0)  # vLLM KV block; CPU needs a multiple of 32


class SearchConfig(_Strict):
    action_graph: dict[str, dict[str, int]] = {
        "root": {"sub_task": 2},
        "sub_task": {"thinking": 2},
        "hypothesis": {"thinking": 2},
        "thinking": {"double_check": 2, "thinking": 2},
        "double_check": {"answer": 1},
        "reflection": {"thinking_from_scratch": 2},
        "thinking_from_scratch": {"thinking": 2},
    }
    exploration_c: float = Field(1.414, ge=0)
    rollouts: int = Field(32, gt=0)  # R
    k_min: int = Field(4, ge=0)
    k_max: int = Field(8, ge=1)
    give_up_factor: int = Field(4, ge=1)  # give up after give_up_factor * R rollouts
    max_depth: int = Field(24, gt=0)
    max_path_tokens: int = Field(3072, gt=0)
    critic_node_types: list[str] = ["double_check", "reflection", "thinking_from_scratch"]
    active_trees: int = Field(64, gt=0)
    max_batch_sequences: int = Field(512, gt=0)
    max_batch_tokens: int = Field(262_144, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _k_range(self) -> SearchConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class DistillConfig(_Strict):
    """The distillation bottleneck row: SFT on long CoT from a reasoning model.

    ``synthetic``: an over-thinking teacher that pads correct solutions with habitual
    reflections and repetitions (the tiny profile). ``file``: a JSONL/Parquet of long-CoT
    responses with question and response fields (e.g. an export of Sky-T1's data).
    """

    source: Literal["synthetic", "file"] = "synthetic"
    path: str | None = None
    question_field: str = "question"
    response_field: str = "response"
    reflections: int = Field(6, ge=0)
    seed: int = 0


class DatasetsConfig(_Strict):
    sft_selection: Literal["longest", "shortest", "all_correct"] = "longest"
    distill: DistillConfig = DistillConfig()


class SFTConfig(_Strict):
    learning_rate: float = Field(2e-5, gt=0)
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(2048, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)


class DPOVariant(_Strict):
    balanced: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    sft_weight: float = Field(0.0, ge=0)
    prefix_mask: bool = False


class DPOConfig(_Strict):
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(1e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(2048, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    variants: dict[str, DPOVariant] = {
        "dpo": DPOVariant(),
        "balanced": DPOVariant(balanced=True),
        "cdpo": DPOVariant(balanced=True, label_smoothing=0.1),
        "joint": DPOVariant(balanced=True, label_smoothing=0.1, sft_weight=1.0),
        "joint_masked": DPOVariant(balanced=True, label_smoothing=0.1, sft_weight=1.0, prefix_mask=True),
    }


class TrainConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    # > 1: the training workers run under `accelerate launch --num_processes N` (one per GPU).
    num_processes: int = Field(1, ge=1)
    # Trainer checkpoints (weights + optimizer + RNG) every N steps under <lake>/trainer_state;
    # a killed training run resumes from the newest. 0: none.
    checkpoint_every: int = Field(200, ge=0)
    sft: SFTConfig = SFTConfig()
    dpo: DPOConfig = DPOConfig()


class EvalConfig(_Strict):
    # vLLM for real models; the tiny profile uses transformers: at ~1M parameters HF generate is
    # as fast here and skips vLLM's ~20 s engine start per checkpoint.
    backend: Literal["vllm", "transformers"] = "vllm"
    test_at_n: int = Field(4, ge=1)
    # n sampled responses per problem (None: test_at_n); Test@k for k <= n uses the unbiased
    # estimator, and accuracy is the mean over all n (less noise than the first sample alone)
    samples: int | None = Field(None, gt=0)
    greedy: bool = True  # one greedy response per problem beside the samples
    temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(1024, gt=0)
    max_problems: int | None = Field(None, gt=0)
    batch_size: int = Field(128, gt=0)  # sequences per transformers generate call
    seed: int = 0  # sampling seed, added to the profile seed

    @model_validator(mode="after")
    def _enough_samples(self) -> EvalConfig:
        if self.samples is not None and self.samples < self.test_at_n:
            raise ValueError(f"samples ({self.samples}) must be at least test_at_n ({self.test_at_n})")
        return self

    def n_samples(self) -> int:
        return self.samples or self.test_at_n


class K8sConfig(_Strict):
    """Workers as Kubernetes pods (dagster-k8s PipesK8sClient), the lake on object storage.

    ``secret_env`` maps an environment variable to ``<secret name>/<key>``: credentials reach
    the pods only as environment variables from Kubernetes secrets, never through the profile."""

    image: str
    namespace: str = "widen-dag"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"  # vLLM and NCCL move tensors through /dev/shm
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []
    secret_env: dict[str, str] = {}
    lake_root: str = Field(pattern=r"^[a-z0-9]+://")  # e.g. s3://bucket/widen-dag, gs://...

    @field_validator("secret_env")
    @classmethod
    def _secret_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for env, ref in value.items():
            if ref.count("/") != 1 or ref.startswith("/") or ref.endswith("/"):
                raise ValueError(f"secret_env.{env}: expected '<secret name>/<key>', got {ref!r}")
        return value


class RuntimeConfig(_Strict):
    """Where workers run: ``local`` subprocesses (default) or ``k8s`` pods."""

    kind: Literal["local", "k8s"] = "local"
    k8s: K8sConfig | None = None
    # A worker still running after this long is stopped (local: SIGTERM, then SIGKILL 60 s
    # later; k8s: the pod's activeDeadlineSeconds) and the asset's retry policy takes over.
    worker_timeout_s: int = Field(48 * 3600, gt=0)

    @model_validator(mode="after")
    def _k8s_settings(self) -> RuntimeConfig:
        if self.kind == "k8s" and self.k8s is None:
            raise ValueError("runtime.kind 'k8s' needs a runtime.k8s section (image, lake_root, ...)")
        return self


class Profile(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    datasets: list[DatasetConfig]
    inbox: InboxConfig = InboxConfig()
    problems: ProblemsConfig = ProblemsConfig()
    models: ModelsConfig = ModelsConfig()
    generation: GenerationConfig = GenerationConfig()
    search: SearchConfig = SearchConfig()
    data: DatasetsConfig = DatasetsConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, value: list[DatasetConfig]) -> list[DatasetConfig]:
        names = [d.name for d in value]
        if INBOX_DATASET in names:
            raise ValueError(f"dataset name {INBOX_DATASET!r} is reserved for the problem inbox")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dupes)}")
        if not value:
            raise ValueError("a profile needs at least one dataset")
        return value

    def shard_keys(self) -> list[str]:
        """Partition keys of ``raw_problems``: ``<dataset>-<shard index>``."""
        return [f"{d.name}-{i:03d}" for d in self.datasets for i in range(d.shards)]

    def dataset(self, name: str) -> DatasetConfig:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ProfileError(f"profile {self.name!r} has no dataset {name!r}")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # Drop pydantic's union-tag segments so the path reads like the YAML the user wrote.
        loc = ".".join(str(p) for p in e["loc"] if p not in ("arithmetic", "file", "planbench", "hub"))
        lines.append(f"{loc or '<root>'}: {e['msg']}")
    return f"invalid profile {source}: " + "; ".join(lines)


def parse_profile(data: object, source: str = "<dict>") -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"invalid profile {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(_format_errors(source, err)) from None


def _merged(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``; mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _profile_data(ref: str, seen: tuple[str, ...] = ()) -> tuple[dict, Path]:
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{ref}.yaml"
    if not path.is_file():
        raise ProfileError(f"no profile {ref!r}: choose one of {', '.join(available_profiles())} or give a .yaml path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProfileError(f"invalid profile {path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if isinstance(data, dict) and "extends" in data:
        # `extends: <profile>`: this file's keys on top of another profile's (e.g. a k8s runtime).
        parent = str(data.pop("extends"))
        if parent in seen:
            raise ProfileError(f"invalid profile {path}: 'extends' cycle through {parent!r}")
        base, _ = _profile_data(parent, (*seen, ref))
        data = _merged(base, data)
    return data, path


def profile_ref(name_or_path: str | None = None) -> str:
    """Which profile is meant: the argument, else ``$WIDEN_DAG_PROFILE``, else ``tiny``; a YAML
    path is made absolute, so another process (a Pipes worker) finds the same file."""
    ref = name_or_path or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    return str(Path(ref).resolve()) if ref.endswith((".yaml", ".yml")) else ref


def with_run_seed(profile: Profile, seed: int | None) -> Profile:
    """The profile for one seed of a multi-seed ablation: search, training, the distillation
    data and evaluation sampling all take ``seed``; the problems, their split and the base
    models stay as the profile has them, so every seed answers the same held-out problems
    (which the paired comparisons and the across-seed spread need). None: unchanged."""
    if seed is None:
        return profile
    return profile.model_copy(update={
        "search": profile.search.model_copy(update={"seed": seed}),
        "train": profile.train.model_copy(update={"seed": seed}),
        "data": profile.data.model_copy(update={"distill": profile.data.distill.model_copy(update={"seed": seed})}),
        "eval": profile.eval.model_copy(update={"seed": seed}),
    })


def load_profile(name_or_path: str | None = None) -> Profile:
    """Load a profile by name (``tiny``), by YAML path, or from ``$WIDEN_DAG_PROFILE``."""
    data, path = _profile_data(profile_ref(name_or_path))
    return parse_profile(data, str(path))
