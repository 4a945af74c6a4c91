"""Device check: the project's generation and training code on a GPU, on tiny models, as JSON.

    python bench/device_check.py [--device cuda|cpu] [--out device_check.json] [--steps 20]

Builds a tiny Llama and tokenizer here (no downloads, no dataset files), then runs HF
generation (widen_dag.llm's transformers backend), SFT and DPO through widen_dag.train, each
as a full fine-tune and with LoRA (merged, then reloaded and generated from), and vLLM when it
is installed: one engine, and two engines on one GPU with a profile's per-model shares
(``--shares-profile``, its models.policy / models.critic gpu_memory_utilization). With 2+ GPUs
visible it also runs SFT under ``accelerate launch`` with 2 processes, the way a training
worker starts (``python -m widen_dag.launch.accelerate_launch --config_file <train.distributed>``).
Checks a CPU cannot run are recorded as skipped, with the reason. Prints one JSON object: versions, the device, and per check tokens/s or s/step
and peak GPU memory; a check that fails records its error and the exit code is 1. Imports
only what it needs (torch, transformers, accelerate, peft, tokenizers; TRL and datasets for
training): no Dagster, no polars, no math-verify. ``--device cpu`` runs the same on CPU, to
try the script without a GPU. bench/device_check.sh brings TRL and datasets to a machine
without them and runs this.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's widen_dag, without installing it

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|end|>", "<|user|>", "<|assistant|>", "<|pad|>"]


def _sft_rows() -> list[dict]:
    """The SFT rows every training check trains on (prompt/completion chat turns)."""
    return [
        {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
        for q, a in _problems(256, seed=2)
    ]


def _problems(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append((f"What is {a} + {b}?", f"<thinking>{a} + {b} = {a + b}</thinking><answer>The answer is: {a + b}</answer>"))
    return out


def build_tiny(folder: Path) -> Path:
    """A tiny Llama (head_dim 32, as vLLM's attention wants) and a BPE tokenizer with a chat
    template, saved as an HF folder with safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [q + a for q, a in _problems(2000)]
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


class Peak:
    """Peak GPU memory of a block (MiB), None on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mib: float | None = None

    def __enter__(self) -> Peak:
        import torch

        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mib = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def check_hf_generation(model_dir: Path, device: str) -> dict:
    from widen_dag.llm import GenerationRequest, create_backend

    backend = create_backend("transformers", str(model_dir), device=device, seed=0)
    try:
        requests = [
            GenerationRequest(prompt=backend.chat_prompt(q), n=1, temperature=0.7, top_p=0.9, max_tokens=64, seed=i)
            for i, (q, _) in enumerate(_problems(32, seed=1))
        ]
        backend.generate(requests[:2])  # warm-up: kernels, allocator
        with Peak(device) as peak:
            start = time.perf_counter()
            out = backend.generate(requests)
            seconds = time.perf_counter() - start
        tokens = sum(s.n_tokens for samples in out for s in samples)
        return {
            "batch": len(requests),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "model_device": str(next(backend.model.parameters()).device),
            "peak_gpu_mib": peak.mib,
        }
    finally:
        backend.close()


def _load(model_dir: Path, dtype=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype), tok


def _save_and_generate(stats, tok, out_dir: Path, device: str) -> dict:
    """Save the exported model (LoRA merged) and generate from the reloaded folder."""
    from widen_dag.llm import GenerationRequest, create_backend

    model, state_dict = stats.export
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tok.save_pretrained(out_dir)
    backend = create_backend("transformers", str(out_dir), device=device, seed=0)
    try:
        (samples,) = backend.generate(
            [
                GenerationRequest(
                    prompt=backend.chat_prompt("What is 2 + 3?"), n=1, temperature=0.0, top_p=1.0, max_tokens=16, seed=0
                )
            ]
        )
    finally:
        backend.close()
    from safetensors import safe_open

    with safe_open(str(out_dir / "model.safetensors"), "pt") as fh:
        names = fh.keys()  # safe_open is not iterable itself
        lora_keys = [k for k in names if "lora_" in k]
    return {"reloaded_generates": samples[0].n_tokens > 0, "saved_lora_tensors": len(lora_keys)}


def check_sft(model_dir: Path, device: str, steps: int, lora: bool, work: Path) -> dict:
    import torch

    from widen_dag.train.sft import train_sft

    model, tok = _load(model_dir, torch.bfloat16 if lora and device == "cuda" else None)
    rows = _sft_rows()
    lora_cfg = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"} if lora else None
    with Peak(device) as peak:
        stats = train_sft(
            model,
            tok,
            rows,
            output_dir=str(work / "state"),
            learning_rate=1e-3,
            batch_size=16,
            max_length=128,
            max_steps=steps,
            device=device,
            seed=0,
            log_every=max(1, steps // 4),
            lora=lora_cfg,
        )
    out = {
        "steps": stats.steps,
        "s_per_step": round(stats.seconds / stats.steps, 4),
        "tokens_per_s": round(stats.tokens_per_s, 1),
        "final_loss": stats.final_loss,
        "peak_gpu_mib": peak.mib,
        "model_device": str(next(model.parameters()).device),
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
    }
    out.update(_save_and_generate(stats, tok, work / "saved", device))
    return out


def check_dpo(model_dir: Path, device: str, steps: int, lora: bool, work: Path) -> dict:
    import torch

    from widen_dag.train.dpo import train_dpo

    model, tok = _load(model_dir, torch.bfloat16 if lora and device == "cuda" else None)
    ref = None if lora else _load(model_dir, torch.bfloat16 if device == "cuda" else None)[0]
    pairs = []
    for i, (q, a) in enumerate(_problems(16 * steps, seed=3)):
        wrong = a.replace("The answer is: ", "The answer is: 1")
        pairs.append(
            {
                "problem_id": f"p{i}",
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": wrong}],
            }
        )
    lora_cfg = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"} if lora else None
    with Peak(device) as peak:
        stats = train_dpo(
            model,
            ref,
            tok,
            pairs,
            output_dir=str(work / "state"),
            beta=0.1,
            learning_rate=1e-4,
            batch_size=16,
            max_length=128,
            epochs=1.0,
            label_smoothing=0.1,
            sft_weight=1.0,
            prefix_mask=True,
            device=device,
            seed=0,
            lora=lora_cfg,
        )
    out = {
        "steps": stats.steps,
        "s_per_step": round(stats.s_per_step, 4),
        "final_loss": stats.final_loss,
        "reference_copy": ref is not None,
        "peak_gpu_mib": peak.mib,
        "masked_prefix_tokens": stats.masked_prefix_tokens,
    }
    out.update(_save_and_generate(stats, tok, work / "saved", device))
    return out


def check_vllm(model_dir: Path, device: str) -> dict:
    from widen_dag.llm import GenerationRequest, create_backend

    backend = create_backend(
        "vllm",
        str(model_dir),
        device=device,
        seed=0,
        max_model_len=512,
        max_num_seqs=64,
        gpu_memory_utilization=0.2,
        cpu_kvcache_gib=1,
        enforce_eager=True,
        block_size=32,
    )
    try:
        requests = [
            GenerationRequest(prompt=backend.chat_prompt(q), n=2, temperature=0.7, top_p=0.9, max_tokens=64, seed=i)
            for i, (q, _) in enumerate(_problems(64, seed=4))
        ]
        backend.generate(requests[:2])
        start = time.perf_counter()
        out = backend.generate(requests)
        seconds = time.perf_counter() - start
        tokens = sum(s.n_tokens for samples in out for s in samples)
        return {
            "requests": len(requests),
            "samples_per_request": 2,
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "prefix_cache_hit_rate": round(backend.stats.prefix_cache_hit_rate, 3),
        }
    finally:
        backend.close()


def vllm_shares(profile_name: str) -> dict[str, float]:
    """The per-engine GPU shares a profile gives its policy and critic vLLM engines."""
    from widen_dag.profiles import load_profile

    profile = load_profile(profile_name)
    default = profile.generation.gpu_memory_utilization
    critic = profile.models.critic or profile.models.policy
    return {
        "policy": profile.models.policy.gpu_memory_utilization or default,
        "critic": critic.gpu_memory_utilization or default,
    }


def check_vllm_two_engines(model_dir: Path, device: str, shares: dict[str, float]) -> dict:
    """Two vLLM engines in one process on one GPU, each with its own share (as a search worker
    runs its policy and critic): both start, both generate, memory per the shares."""
    import torch

    from widen_dag.llm import GenerationRequest, create_backend

    engines, free_before = {}, {}
    try:
        for role, share in shares.items():
            free_before[role] = round(torch.cuda.mem_get_info()[0] / 2**30, 2)
            engines[role] = create_backend(
                "vllm",
                str(model_dir),
                device=device,
                seed=0,
                max_model_len=512,
                max_num_seqs=64,
                gpu_memory_utilization=share,
                enforce_eager=True,
                block_size=32,
            )
        out = {}
        for role, backend in engines.items():
            requests = [
                GenerationRequest(prompt=backend.chat_prompt(q), n=1, temperature=0.7, top_p=0.9, max_tokens=32, seed=i)
                for i, (q, _) in enumerate(_problems(16, seed=5))
            ]
            samples = backend.generate(requests)
            out[role] = {
                "gpu_memory_utilization": shares[role],
                "free_gib_before_start": free_before[role],
                "generated_tokens": sum(s.n_tokens for group in samples for s in group),
            }
        out["free_gib_with_both"] = round(torch.cuda.mem_get_info()[0] / 2**30, 2)
        out["total_gib"] = round(torch.cuda.mem_get_info()[1] / 2**30, 2)
        return out
    finally:
        for backend in engines.values():
            backend.close()


def check_accelerate_two_processes(model_dir: Path, steps: int, distributed: str, work: Path) -> dict:
    """SFT under ``accelerate launch`` with 2 processes (one per GPU) and a shipped config by name,
    through the launcher a training pod runs; rank 0 reports what the ranks did."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), repo) if p)}
    work.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "widen_dag.launch.accelerate_launch",
        "--config_file",
        distributed,
        "--num_processes",
        "2",
        str(Path(__file__).resolve()),
        "--rank-sft",
        str(model_dir),
        str(work),
        "--steps",
        str(steps),
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=540)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch exited {proc.returncode}: {proc.stderr[-1500:]}")
    return {"distributed": distributed, **json.loads((work / "rank0.json").read_text())}


def rank_sft(model_dir: Path, work: Path, steps: int) -> None:
    """One rank of check_accelerate_two_processes (run by accelerate, not by hand)."""
    import torch.distributed as dist

    from widen_dag.train.sft import train_sft

    model, tok = _load(model_dir)
    rows = _sft_rows()
    stats = train_sft(
        model,
        tok,
        rows,
        output_dir=str(work / "state"),
        learning_rate=1e-3,
        batch_size=8,
        max_length=128,
        max_steps=steps,
        device="cuda",
        seed=0,
        log_every=max(1, steps // 4),
    )
    world = dist.get_world_size() if dist.is_initialized() else 1
    if int(os.environ.get("RANK", "0")) == 0:
        (work / "rank0.json").write_text(
            json.dumps(
                {
                    "world_size": world,
                    "steps": stats.steps,
                    "s_per_step": round(stats.seconds / max(stats.steps, 1), 4),
                    "final_loss": stats.final_loss,
                }
            )
        )


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "accelerate", "peft", "tokenizers", "trl", "datasets", "vllm"):
        try:
            out[name] = __import__(name).__version__ if importlib.util.find_spec(name) else None
        except Exception as err:  # a broken install is worth reporting, not fatal
            out[name] = f"import failed: {type(err).__name__}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per training check")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument(
        "--shares-profile", default="qwen2_5_1_5b_math", help="profile whose policy/critic vLLM shares the two engines take"
    )
    parser.add_argument("--distributed", default="fsdp", help="accelerate config (train.distributed) of the 2-process check")
    parser.add_argument("--rank-sft", nargs=2, metavar=("MODEL_DIR", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.rank_sft:  # one rank of the accelerate check
        rank_sft(Path(args.rank_sft[0]), Path(args.rank_sft[1]), args.steps)
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "--device cuda but torch sees no CUDA device (use --device cpu for a dry run)"}))
        return 2
    report: dict = {
        "versions": versions(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "gpus_visible": torch.cuda.device_count() if args.device == "cuda" else 0,
        "checks": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny(work / "tiny")
        n_params = sum(p.numel() for p in _load(model_dir)[0].parameters())
        report["tiny_model_parameters"] = n_params
        checks = [("hf_generation", lambda: check_hf_generation(model_dir, args.device))]
        for lora in (False, True):
            tag = "lora" if lora else "full"
            checks.append(
                (
                    f"sft_{tag}",
                    lambda lora=lora, tag=tag: check_sft(model_dir, args.device, args.steps, lora, work / f"sft_{tag}"),
                )
            )
            checks.append(
                (
                    f"dpo_{tag}",
                    lambda lora=lora, tag=tag: check_dpo(model_dir, args.device, args.steps, lora, work / f"dpo_{tag}"),
                )
            )
        if importlib.util.find_spec("vllm") and not args.skip_vllm:
            checks.append(("vllm", lambda: check_vllm(model_dir, args.device)))
        else:
            report["checks"]["vllm"] = {"skipped": "vllm not installed" if not args.skip_vllm else "--skip-vllm"}
        shares = vllm_shares(args.shares_profile)
        report["vllm_shares"] = {"profile": args.shares_profile, **shares}
        if args.device == "cuda" and importlib.util.find_spec("vllm") and not args.skip_vllm:
            checks.append(("vllm_two_engines_one_gpu", lambda: check_vllm_two_engines(model_dir, args.device, shares)))
        else:
            reason = "GPU shares need a GPU" if args.device != "cuda" else "vllm not installed or --skip-vllm"
            report["checks"]["vllm_two_engines_one_gpu"] = {"skipped": reason}
        if report["gpus_visible"] >= 2:
            checks.append(
                (
                    "accelerate_two_processes",
                    lambda: check_accelerate_two_processes(model_dir, args.steps, args.distributed, work / "accelerate"),
                )
            )
        else:
            report["checks"]["accelerate_two_processes"] = {"skipped": f"{report['gpus_visible']} GPU(s) visible, needs 2"}
        for name, fn in checks:
            t0 = time.perf_counter()
            try:
                result = fn()
                result["ok"] = True
            except Exception as err:
                result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            report["checks"][name] = result
            print(
                f"[device_check] {name}: {'ok' if result['ok'] else 'FAILED ' + result['error']} ({result['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(c.get("ok", True) for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
