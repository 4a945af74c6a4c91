"""Worker: the `policy_model` and `student_base` assets.

``python -m widen_dag.workers.models policy|student``

Tiny profile (``source: bootstrap``): train a tokenizer and a small Llama here (TRL SFT on
synthetic arithmetic solutions), measure the held-out single-sample accuracy and the
well-formed rate with the profile's evaluation backend, and save an ordinary HF checkpoint
(safetensors, tokenizer.json, chat template) to the lake. Real profiles: record the named
model (id, revision or path) without training.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from widen_dag import domains
from widen_dag.domains import arithmetic, synthetic
from widen_dag.domains.base import Problem
from widen_dag.evaluate import sample_and_score, summarize
from widen_dag.llm import eval_backend_from_profile, gguf
from widen_dag.reporting.markdown import md
from widen_dag.reporting.plots import line_plot_png, markdown_image
from widen_dag.storage.artifacts import (
    BOOTSTRAP_ASSETS,
    MODEL_PROVENANCE,
    bootstrap_dir,
    bootstrap_parts,
    cache_root,
    gguf_dir,
    gguf_file,
    gguf_parts,
    gguf_roles,
    read_model_provenance,
)
from widen_dag.storage.lake import file_sha256
from widen_dag.train import bootstrap, instruct
from widen_dag.train.trainer import resolve_device
from widen_dag.workers.common import Worker, eval_engines_in_this_process, open_worker

EVAL_SEED_OFFSET = 424_242  # held-out problems drawn apart from the training problems


def _excluded_questions(worker: Worker) -> set[str]:
    """Staged problems (train and eval) never appear in the tiny models' training sets."""
    if worker.lake.has_table("stg_problems"):
        return set(worker.lake.read_table("stg_problems")["question"].to_list())
    return set()


def _if_tasks(cfg, n: int, seed: int, exclude: set[str]) -> list[synthetic.IFTask]:
    """``n`` instruction-following tasks, none a staged problem nor built on a staged word problem."""
    if not n:
        return []
    pool = synthetic.if_tasks(n * 2 + len(exclude), seed, cfg.steps, cfg.max_operand, cfg.ops)
    return [t for t in pool if t.prompt not in exclude and t.question not in exclude][:n]


def _if_heldout(cfg, seed: int, exclude: set[str], n: int) -> list[Problem]:
    tasks = _if_tasks(cfg, n if cfg.ifeval_problems else 0, seed + EVAL_SEED_OFFSET, exclude)
    return [Problem(f"heldout-i{i}", "instruction_following", t.prompt, t.gold()) for i, t in enumerate(tasks)]


def _heldout(cfg, seed: int, exclude: set[str]) -> list[Problem]:
    pool = arithmetic.generate(cfg.eval_problems * 2 + len(exclude), cfg.steps, cfg.max_operand, seed + EVAL_SEED_OFFSET, cfg.ops)
    picked = [p for p in pool if p.question not in exclude][: cfg.eval_problems]
    out = [Problem(f"heldout-{i}", "arithmetic", p.question, p.gold) for i, p in enumerate(picked)]
    return out + _if_heldout(cfg, seed, exclude, cfg.eval_problems // 2)


def _tiny_row(domain: str, question: str, completion: str) -> dict[str, str]:
    """A prompt/completion row in the tiny chat format, prompted as the search prompts ``domain``."""
    prompt = domains.get_domain(domain).task_prompt(question)
    return {"prompt": bootstrap.USER + prompt + bootstrap.END + bootstrap.ASSISTANT, "completion": completion}


def _bootstrap_seed(profile) -> int:
    """Where the bootstrapped models' seeds start (policy +0, student +1, critic +2); the
    held-out check keeps the profile seed, so every bootstrap seed is scored on the same problems."""
    cfg = profile.models.bootstrap
    return profile.seed if cfg.seed is None else cfg.seed


def _tiny_training_rows(worker: Worker, which: str, exclude: set[str]):
    """(problems, arithmetic rows, instruction-following rows) the tiny ``which`` model trains on."""
    cfg = worker.profile.models.bootstrap
    seed = _bootstrap_seed(worker.profile) + (0 if which == "policy" else 1)
    problems = bootstrap.synthetic_problems(cfg.train_problems, cfg.steps, cfg.max_operand, seed, exclude, cfg.ops)
    if_tasks = _if_tasks(cfg, cfg.ifeval_problems, seed, exclude)
    rng = random.Random(seed)
    if which == "policy":
        arith_rows = [_tiny_row("arithmetic", p.question, bootstrap.tagged_solution(p, rng, cfg.error_rate)) for p in problems]
        if_rows = [
            _tiny_row("instruction_following", t.prompt, bootstrap.tagged_if_solution(t, rng, cfg.error_rate)) for t in if_tasks
        ]
    else:
        style = cfg.student_style
        arith_rows = [_tiny_row("arithmetic", p.question, bootstrap.student_solution(p, rng, style)) for p in problems]
        if_rows = [_tiny_row("instruction_following", t.prompt, bootstrap.student_if_solution(t, rng, style)) for t in if_tasks]
    return problems, arith_rows, if_rows


def _tiny_tokenizer(worker: Worker, exclude: set[str], out: Path):
    """The tokenizer the tiny policy and student share, trained into ``out``. Each model's worker
    trains it from the same texts (the BPE trainer is deterministic), so the student needs
    nothing from the policy and both train side by side (widen_dag.launch.cpus)."""
    problems, arith_rows, if_rows = _tiny_training_rows(worker, "policy", exclude)
    # (The training run shuffles rows; the corpus takes each domain's first ones.)
    corpus = [r["prompt"] + r["completion"] for r in arith_rows[:4000] + if_rows[:600]]
    # The student shares the tokenizer, so its plain texts shape the vocabulary too.
    corpus += [bootstrap.plain_solution(p) for p in problems[:2000]]
    return bootstrap.train_tokenizer(corpus, worker.profile.models.bootstrap.vocab_size, out)


def build_tiny(worker: Worker, which: str) -> dict:
    import torch

    profile = worker.profile
    cfg = profile.models.bootstrap
    seed = _bootstrap_seed(profile) + (0 if which == "policy" else 1)
    device = resolve_device(profile.train.device)
    exclude = _excluded_questions(worker)
    _, arith_rows, if_rows = _tiny_training_rows(worker, which, exclude)
    steps = cfg.policy_steps if which == "policy" else cfg.student_steps
    rows = arith_rows + if_rows
    torch.manual_seed(seed)
    with worker.lake.staged_dir(*bootstrap_parts(which)) as out:
        tokenizer = _tiny_tokenizer(worker, exclude, out)
        stats = _train_and_save(worker, which, out, tokenizer, rows, steps, seed, device)
        metrics = evaluate_saved(worker, out, _heldout(cfg, profile.seed, exclude), cfg.eval_max_tokens)
    loss_png = line_plot_png({"train loss": [(float(s), v) for s, v in stats.losses]}, f"{which} SFT", "step", "loss")
    return {
        "path": str(bootstrap_dir(worker.lake, which)),
        "source": "bootstrap",
        "parameters": bootstrap.n_parameters_from_config(bootstrap_dir(worker.lake, which)),
        # the same in policy_model's and student_base's metadata: one tokenizer, trained twice
        "tokenizer_sha256": file_sha256(bootstrap_dir(worker.lake, which) / "tokenizer.json"),
        "train_steps": steps,
        "train_examples": stats.examples,
        "train_seconds": round(stats.seconds, 1),
        "torch_threads": stats.torch_threads,
        "train_tokens_per_s": round(stats.tokens_per_s, 1),
        "final_loss": stats.final_loss,
        "loss_curve": md(markdown_image(loss_png, f"{which} loss")),
        **metrics,
    }


def evaluate_saved(worker: Worker, path: Path, problems: list[Problem], max_tokens: int) -> dict:
    gen = worker.profile.generation
    start = time.perf_counter()
    # The evaluation stage's backend: on tiny that is transformers, which skips a vLLM engine
    # start (~20-30 s here) per model; search still exercises vLLM on the same checkpoint.
    eval_engines_in_this_process(worker.profile)
    backend = eval_backend_from_profile(worker.profile, str(path), seed=worker.profile.seed)
    try:
        rows = sample_and_score(
            backend, problems, n=1, temperature=gen.temperature, top_p=gen.top_p, max_tokens=max_tokens, seed=worker.profile.seed
        )
        stats = backend.stats.as_dict()
    finally:
        backend.close()
    summary = summarize(rows)
    examples = "\n\n".join(
        f"**{r['problem_id']}** ({'correct' if r['correct'] else 'wrong'}): `{r['response'][:400]}`" for r in rows[:3]
    )
    worker.log(
        f"held-out accuracy {summary['accuracy']:.3f}, well-formed {summary['well_formed_rate']:.3f} on {summary['n']} problems"
    )
    # One figure per domain where the held-out set mixes them (e.g. arithmetic and IF requests).
    domain_of = {p.problem_id: p.domain for p in problems}
    per_domain = {}
    if len(set(domain_of.values())) > 1:
        for domain in sorted(set(domain_of.values())):
            part = summarize([r for r in rows if domain_of[r["problem_id"]] == domain])
            per_domain[f"heldout_accuracy_{domain}"] = round(part["accuracy"], 4)
            per_domain[f"heldout_no_answer_rate_{domain}"] = round(part["no_answer_rate"], 4)
            worker.log(f"  {domain}: accuracy {part['accuracy']:.3f}, no-answer {part['no_answer_rate']:.3f} on {part['n']}")
    return {
        "heldout_problems": summary["n"],
        "heldout_accuracy": round(summary["accuracy"], 4),
        "heldout_no_answer_rate": round(summary["no_answer_rate"], 4),
        "well_formed_rate": round(summary["well_formed_rate"], 4),
        "mean_response_tokens": round(summary["mean_tokens"], 1),
        "eval_backend": worker.profile.eval.backend,
        "eval_seconds": round(time.perf_counter() - start, 1),
        "eval_generated_tokens_per_s": stats["generated_tokens_per_s"],
        **per_domain,
        "samples": md(examples),
    }


# ---- instruct-shaped stand-ins (tiny_instruct) -------------------------------------------------
def _instruct_problems(cfg, seed: int, exclude: set[str]) -> tuple[list[dict], list[dict], list[synthetic.IFTask]]:
    """Fresh GSM8K-format rows, PlanBench-format rows and instruction-following tasks for
    training, none of them a staged problem (nor an IF task built on a staged word problem)."""
    math_rows = [
        r
        for r in synthetic.gsm8k_rows(cfg.train_problems + len(exclude), seed, cfg.steps, cfg.max_operand, cfg.ops)
        if r["question"] not in exclude
    ][: cfg.train_problems]
    bw_rows = []
    if cfg.blocksworld_problems:
        pool = synthetic.planbench_instances(cfg.blocksworld_problems * 2 + len(exclude), seed)
        bw_rows = [r for r in pool if instruct._statement(r["query"]) not in exclude][: cfg.blocksworld_problems]
    return math_rows, bw_rows, _if_tasks(cfg, cfg.ifeval_problems, seed, exclude)


def _instruct_heldout(cfg, seed: int, exclude: set[str]) -> list[Problem]:
    math_rows, bw_rows, _ = _instruct_problems(
        cfg.model_copy(
            update={
                "train_problems": cfg.eval_problems,
                "blocksworld_problems": cfg.eval_problems // 2 if cfg.blocksworld_problems else 0,
                "ifeval_problems": 0,
            }
        ),
        seed + EVAL_SEED_OFFSET,
        exclude,
    )
    out = [
        Problem(f"heldout-m{i}", "math", r["question"], r["answer"].split("####")[-1].strip()) for i, r in enumerate(math_rows)
    ]
    out += [
        Problem(f"heldout-b{i}", "blocksworld", instruct._statement(r["query"]), r["ground_truth_plan"])
        for i, r in enumerate(bw_rows)
    ]
    return out + _if_heldout(cfg, seed, exclude, cfg.eval_problems // 2)


def _train_instruct_model(worker: Worker, which: str, out: Path, tokenizer, pairs: list[tuple[str, str]], steps: int, seed: int):
    rows = [
        {
            "prompt": tokenizer.apply_chat_template([{"role": "user", "content": u}], add_generation_prompt=True, tokenize=False),
            "completion": a,
        }
        for u, a in pairs
    ]
    device = resolve_device(worker.profile.train.device)
    return _train_and_save(worker, which, out, tokenizer, rows, steps, seed, device, style="instruct")


def _train_and_save(
    worker: Worker,
    which: str,
    out: Path,
    tokenizer,
    rows: list[dict[str, str]],
    steps: int,
    seed: int,
    device: str,
    style: str | None = None,
):
    """A new tiny Llama for ``tokenizer``, trained ``steps`` steps on prompt/completion ``rows``
    and saved with its tokenizer and a small provenance file into the staged folder ``out``."""
    cfg = worker.profile.models.bootstrap
    model = bootstrap.new_model(
        tokenizer, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.max_position_embeddings, seed
    )
    worker.log(f"{which}: {bootstrap.n_parameters(model):,} parameters, {steps} steps x {cfg.batch_size} on {device}")
    stats = bootstrap.train_tiny(
        model,
        tokenizer,
        rows,
        steps=steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_position_embeddings,
        seed=seed,
        device=device,
        warmup_ratio=0.03,
        log_every=max(1, steps // 10),
        on_log=worker.log,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    provenance = {"role": which, "source": "bootstrap", **({"style": style} if style else {}), "seed": seed, "steps": steps}
    (out / MODEL_PROVENANCE).write_text(json.dumps(provenance))
    return stats


def _instruct_pairs(math_rows, bw_rows, if_rows, rng: random.Random, error_rate: float) -> list[tuple[str, str]]:
    """(user turn, assistant turn) pairs, each prompted as its domain prompts the search."""
    return instruct.training_pairs(
        math_rows,
        bw_rows,
        rng,
        error_rate,
        domains.get_domain("math").task_prompt,
        domains.get_domain("blocksworld").task_prompt,
        if_rows,
        domains.get_domain("instruction_following").task_prompt,
    )


def build_instruct(worker: Worker, which: str) -> dict:
    """tiny_instruct's models: a ChatML policy (and with ``models.critic: {source: bootstrap}`` a
    Llama-3-style critic of its own), or the ChatML student, trained on free-form text."""
    import torch

    profile = worker.profile
    cfg = profile.models.bootstrap
    seed = _bootstrap_seed(profile) + (0 if which == "policy" else 1)
    exclude = _excluded_questions(worker)
    math_rows, bw_rows, if_rows = _instruct_problems(cfg, seed, exclude)
    rng = random.Random(seed)
    pairs = _instruct_pairs(math_rows, bw_rows, if_rows, rng, cfg.error_rate if which == "policy" else cfg.error_rate / 2)
    torch.manual_seed(seed)
    extra: dict = {}
    with worker.lake.staged_dir(*bootstrap_parts(which)) as out:
        # The ChatML tokenizer both share, trained from the policy's texts by each worker (as _tiny_tokenizer).
        if which == "policy":
            policy_pairs = pairs
        else:
            policy_seed = _bootstrap_seed(profile)
            policy_pairs = _instruct_pairs(
                *_instruct_problems(cfg, policy_seed, exclude), random.Random(policy_seed), cfg.error_rate
            )
        tokenizer = instruct.train_tokenizer([u + "\n" + a for u, a in policy_pairs], cfg.vocab_size, out, "chatml")
        steps = cfg.policy_steps if which == "policy" else cfg.student_steps
        stats = _train_instruct_model(worker, which, out, tokenizer, pairs, steps, seed)
        heldout = _instruct_heldout(cfg, profile.seed, exclude)
        metrics = evaluate_saved(worker, out, heldout, cfg.eval_max_tokens)
    if which == "policy" and profile.models.critic is not None and profile.models.critic.source == "bootstrap":
        # The critic: another model with another chat template, trained on other samples.
        critic_seed = _bootstrap_seed(profile) + 2
        crng = random.Random(critic_seed)
        cpairs = _instruct_pairs(math_rows, bw_rows, if_rows, crng, cfg.error_rate / 2)
        with worker.lake.staged_dir(*bootstrap_parts("critic")) as out:
            ctok = instruct.train_tokenizer([u + "\n" + a for u, a in cpairs], cfg.vocab_size, out, "llama3")
            cstats = _train_instruct_model(worker, "critic", out, ctok, cpairs, cfg.critic_steps, critic_seed)
            cmetrics = evaluate_saved(worker, out, heldout, cfg.eval_max_tokens)
        extra = {
            "critic_path": str(bootstrap_dir(worker.lake, "critic")),
            "critic_train_steps": cfg.critic_steps,
            "critic_final_loss": cstats.final_loss,
            "critic_chat_template": "llama3 (<|eot_id|>)",
            "critic_heldout_accuracy": cmetrics["heldout_accuracy"],
            "critic_heldout_no_answer_rate": cmetrics["heldout_no_answer_rate"],
        }
    loss_png = line_plot_png({"train loss": [(float(s), v) for s, v in stats.losses]}, f"{which} SFT", "step", "loss")
    return {
        "path": str(bootstrap_dir(worker.lake, which)),
        "source": "bootstrap",
        "style": "instruct",
        "chat_template": "chatml (<|im_end|>)",
        "parameters": bootstrap.n_parameters_from_config(bootstrap_dir(worker.lake, which)),
        # the same in policy_model's and student_base's metadata: one tokenizer, trained twice
        "tokenizer_sha256": file_sha256(bootstrap_dir(worker.lake, which) / "tokenizer.json"),
        "train_steps": steps,
        "train_examples": stats.examples,
        "train_seconds": round(stats.seconds, 1),
        "torch_threads": stats.torch_threads,
        "final_loss": stats.final_loss,
        "loss_curve": md(markdown_image(loss_png, f"{which} loss")),
        **metrics,
        **extra,
    }


@contextlib.contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """An exclusive flock on ``name`` in this machine's cache folder (widen_dag.storage.artifacts.cache_root)."""
    path = cache_root() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def convert_gguf_models(worker: Worker, which: str) -> dict:
    """Each GGUF model of this asset de-quantized into its lake folder, once per file and dtype
    (a folder converted from the same file by the same converter is kept)."""
    metadata: dict = {"source": "gguf"}
    for role, field, ref in gguf_roles(worker.profile, which):
        src = gguf_file(ref, field)
        started = time.perf_counter()
        sha = file_sha256(src)
        folder = gguf_dir(worker.lake, ref)
        # policy_model and student_base run side by side and may name the same file: one converts,
        # the other waits and finds the folder converted.
        with _machine_lock(f"gguf-{sha[:16]}-{ref.dtype}"):
            if gguf.is_converted(folder, sha, ref.dtype):
                record = read_model_provenance(folder) or {}
                worker.log(f"{role}: {folder} already holds {src.name} (sha256 {sha[:12]}) as {ref.dtype}")
            else:
                worker.log(f"{role}: converting {src} (sha256 {sha[:12]}) to {ref.dtype} safetensors in {folder}")
                provenance = {"gguf_file": ref.name, "package": ref.package, "gguf_sha256": sha, "gguf_bytes": src.stat().st_size}
                if ref.package and not ref.package.endswith(".whl"):
                    import importlib.metadata

                    provenance["package_version"] = importlib.metadata.version(ref.package)
                with worker.lake.staged_dir(*gguf_parts(ref)) as out:
                    record = gguf.convert(src, out, ref.dtype, provenance)
        prefix = "" if role in ("policy", "student") else f"{role}_"
        metadata.update(
            {
                f"{prefix}path": str(folder),
                f"{prefix}model": f"{ref.package + ':' if ref.package else ''}{ref.name}",
                f"{prefix}gguf_sha256": sha,
                f"{prefix}dtype": ref.dtype,
                f"{prefix}parameters": record.get("parameters"),
                f"{prefix}converter": json.dumps(record.get("converter")),
                f"{prefix}convert_seconds": round(time.perf_counter() - started, 1),
            }
        )
    return metadata


def record_named(worker: Worker, which: str) -> dict:
    ref = worker.profile.models.policy if which == "policy" else worker.profile.models.student
    return {
        "source": ref.source,
        "model": ref.name,
        "revision": ref.revision or "(default branch)",
        "trust_remote_code": ref.trust_remote_code,
    }


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which not in BOOTSTRAP_ASSETS:
        raise SystemExit(f"usage: python -m widen_dag.workers.models {{{'|'.join(BOOTSTRAP_ASSETS)}}}")
    with open_worker() as worker:
        ref = worker.profile.models.policy if which == "policy" else worker.profile.models.student
        if ref.source == "gguf" or (which == "policy" and gguf_roles(worker.profile, which)):
            metadata = convert_gguf_models(worker, which)
            if ref.source != "gguf":
                metadata = {**record_named(worker, which), **{k: v for k, v in metadata.items() if k.startswith("critic_")}}
        elif ref.source != "bootstrap":
            metadata = record_named(worker, which)
        elif worker.profile.models.bootstrap.style == "instruct":
            metadata = build_instruct(worker, which)
        else:
            metadata = build_tiny(worker, which)
        version = json.dumps(
            {
                k: metadata.get(k)
                for k in (
                    "path",
                    "model",
                    "revision",
                    "train_steps",
                    "final_loss",
                    "gguf_sha256",
                    "critic_gguf_sha256",
                    "converter",
                )
            },
            default=str,
        )
        worker.pipes.report_asset_materialization(metadata=metadata, data_version=bootstrap.short_hash(version))


if __name__ == "__main__":
    main()
