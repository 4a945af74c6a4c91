"""The tiny models of the embedded profile, built here with no model hub.

* a byte-level BPE tokenizer trained on the synthetic corpus (tokenizers library), every
  thought tag a single token, with a chat template;
* a small Llama-architecture model (about 1M parameters);
* a plain torch training loop for them (``train_tiny``), batches of similar length;
* training texts: tagged solutions of the arithmetic domain in exactly the node format of
  the search (widen_dag.search.thoughts), including wrong steps that a double-check catches
  and a reflection repairs, so the policy imitates the format and makes real mistakes; with
  ``ifeval_problems``, instruction-following requests (word problems under IFEval
  constraints) in the same format, some responses ignoring a constraint; and plain or
  check-free solutions for the student base.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from widen_dag.domains import arithmetic
from widen_dag.domains.arithmetic import ArithmeticProblem
from widen_dag.domains.synthetic import IFTask
from widen_dag.search.thoughts import REFLECTION_TEXT, all_tag_strings, choose_prefill, wrap
from widen_dag.train import instruct
from widen_dag.train.batching import length_batches
from widen_dag.train.trainer import TrainStats

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
PAD, BOS, UNK = "<pad>", "<s>", "<unk>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


# ---- texts --------------------------------------------------------------------------------
def _plan(p: ArithmeticProblem) -> str:
    return f"Start with {p.start}, then " + ", then ".join(f"{s.op} {s.right}" for s in p.steps) + "."


def _slip(result: int, rng: random.Random) -> int:
    wrong = result + rng.choice([-2, -1, 1, 2, 10, -10])
    return wrong if wrong >= 0 and wrong != result else result + 1


def _thought(node_type: str, body: str, rng: random.Random) -> str:
    """One tagged thought: the type's prefill phrase (drawn from ``rng``), then ``body``."""
    return wrap(node_type, f"{choose_prefill(node_type, rng)} {body}")


def tagged_solution(p: ArithmeticProblem, rng: random.Random, error_rate: float) -> str:
    """A solution in the search's node format; with probability ``error_rate`` one step
    is computed wrong, caught by a double-check, and redone after a reflection."""
    slip_at = rng.randrange(len(p.steps)) if rng.random() < error_rate else -1
    parts = [_thought("sub_task", _plan(p), rng)]
    for i, s in enumerate(p.steps):
        if i == slip_at:
            wrong = _slip(s.result, rng)
            parts.append(_thought("thinking", f"{s.left} {s.op} {s.right} = {wrong}", rng))
            parts.append(_thought("double_check", f"{s.left} {s.op} {s.right} = {s.result}, not {wrong}.", rng))
            parts.append(wrap("reflection", REFLECTION_TEXT))
            parts.append(_thought("thinking_from_scratch", s.equation(), rng))
        else:
            parts.append(_thought("thinking", s.equation(), rng))
    parts.append(_thought("double_check", p.steps[-1].equation(), rng))
    parts.append(_thought("answer", f"\\boxed{{{p.gold}}}", rng))
    return "".join(parts)


def plain_solution(p: ArithmeticProblem) -> str:
    """An untagged solution, for the student base."""
    return " ".join(f"{s.equation()}." for s in p.steps) + f" The answer is \\boxed{{{p.gold}}}."


def direct_solution(p: ArithmeticProblem, rng: random.Random) -> str:
    """A tagged solution with no double-check, slip or reflection: the student base knows the
    thought format (like an instruct model knows step-by-step answers) but not the
    self-checking habits the trees teach."""
    parts = [_thought("sub_task", _plan(p), rng)]
    parts += [_thought("thinking", s.equation(), rng) for s in p.steps]
    parts.append(_thought("answer", f"\\boxed{{{p.gold}}}", rng))
    return "".join(parts)


def student_solution(p: ArithmeticProblem, rng: random.Random, style: str) -> str:
    """The student base's training text in the configured style (``plain`` or ``direct``)."""
    if style == "plain":
        return plain_solution(p)
    if style == "direct":
        return direct_solution(p, rng)
    raise ValueError(f"models.bootstrap.student_style must be 'plain' or 'direct', got {style!r}")


def if_plan(task: IFTask) -> str:
    return "Work out the number, then answer " + " and ".join(c.brief for c in task.constraints) + "."


def tagged_if_solution(task: IFTask, rng: random.Random, error_rate: float, checks: bool = True) -> str:
    """An instruction-following task in the node format: a plan naming the constraints, the
    worked steps, (with ``checks``) a double-check, then the constrained response as the
    answer; with probability ``error_rate`` the response ignores one constraint."""
    skip = rng.choice(task.constraints).kind if rng.random() < error_rate else None
    eqs, _ = instruct.if_worked(task)
    parts = [_thought("sub_task", if_plan(task), rng)]
    parts += [_thought("thinking", e, rng) for e in eqs]
    if checks:
        parts.append(_thought("double_check", eqs[-1], rng))
    parts.append(_thought("answer", instruct.if_content(task, rng, skip), rng))
    return "".join(parts)


def student_if_solution(task: IFTask, rng: random.Random, style: str) -> str:
    """The student base's response to an instruction-following task: check-free tagged thoughts
    (``direct``), or the worked steps and the response with no answer block (``plain``: a
    model that does not know the format, so a no-answer)."""
    if style == "direct":
        return tagged_if_solution(task, rng, 0.0, checks=False)
    if style == "plain":
        return " ".join(f"{e}." for e in instruct.if_worked(task)[0]) + " " + instruct.if_content(task, rng)
    raise ValueError(f"models.bootstrap.student_style must be 'plain' or 'direct', got {style!r}")


def synthetic_problems(
    n: int, steps: int, max_operand: int, seed: int, exclude: Iterable[str] = (), ops: str = "+-*"
) -> list[ArithmeticProblem]:
    """Training problems for the tiny models, never one of ``exclude`` (the staged problems)."""
    banned = set(exclude)
    pool = arithmetic.generate(n + len(banned), steps, max_operand, seed, ops)
    return [p for p in pool if p.question not in banned][:n]


# ---- tokenizer ----------------------------------------------------------------------------
def train_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE; tags and chat markers are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    # GPT-2 style pre-splitting keeps " 12" together, so small numbers become single tokens:
    # shorter sequences, and a table of number facts a tiny model learns faster than digits.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, UNK, USER, ASSISTANT, END]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    from tokenizers import AddedToken

    # Tags are ordinary (non-special) added tokens: one id each, and they survive decoding,
    # so stop strings like "</thinking>" match in generated text.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in all_tag_strings()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(out_dir)
    return fast


# ---- model --------------------------------------------------------------------------------
def new_model(
    tokenizer, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, max_positions: int, seed: int
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    return LlamaForCausalLM(config)


# ---- training -----------------------------------------------------------------------------
def train_tiny(
    model,
    tokenizer,
    rows: list[dict[str, str]],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    seed: int,
    device: str = "cpu",
    warmup_ratio: float = 0.03,
    log_every: int = 20,
    on_log: Callable[[str], None] | None = None,
) -> TrainStats:
    """Supervised training of a bootstrapped tiny model on prompt/completion rows: loss on the
    completion (which ends with EOS) only, AdamW, linear decay after a warmup, gradients
    clipped at 1.0, the settings SFT uses, in a plain torch loop on length-grouped batches.
    On the tiny policy's texts (measured here, 2 threads) TRL's SFTTrainer took 0.449 s/step on
    random batches (40% padding), a plain loop on the same batches 0.375 s, this one 0.223 s.
    Real models train through ``widen_dag.train.sft``."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from widen_dag.launch.cpus import ThreadShare
    from widen_dag.progress import ProgressReporter

    if not rows:
        raise ValueError("tiny model training set is empty")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for i, r in enumerate(rows):
        if not r["completion"]:
            raise ValueError(f"tiny training row {i}: empty completion")
    # one batched call per column (the tokenizer's Rust batch path: 1.6x faster on the policy's rows)
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    completions = tokenizer([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    examples = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if len(prompt) >= max_length:
            raise ValueError(f"tiny training row {i}: a prompt of {len(prompt)} tokens, over {max_length}")
        examples.append(((prompt + completion + [eos])[:max_length], len(prompt)))
    batches = length_batches([len(ids) for ids, _ in examples], batch_size, seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    progress = ProgressReporter(on_log) if on_log else None
    stats = TrainStats(processes=1, global_batch=batch_size)
    window: list[float] = []
    model.train()
    start = time.perf_counter()
    share = ThreadShare()  # beside another training worker on a CPU machine: half the cores, else all
    for step in range(1, steps + 1):
        share.rebalance()
        batch = [examples[i] for i in next(batches)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, (ids, n_prompt) in enumerate(batch):
            input_ids[k, : len(ids)] = torch.tensor(ids)
            labels[k, n_prompt : len(ids)] = input_ids[k, n_prompt : len(ids)]
            mask[k, : len(ids)] = 1
        inputs = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        loss = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        stats.tokens += int(mask.sum())
        stats.examples += len(batch)
        if progress:
            progress("training steps", step, steps)
        if step % log_every == 0 or step == steps:
            stats.losses.append((step, sum(window) / len(window)))
            window = []
            if on_log:
                on_log(f"step {step}/{steps} loss {stats.losses[-1][1]:.4f}")
    stats.seconds = time.perf_counter() - start
    stats.steps = steps
    stats.torch_threads = share.span()
    model.eval()
    model.config.use_cache = True
    return stats


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def n_parameters_from_config(path: Path) -> int:
    """Parameter count of a saved checkpoint, from its safetensors header (no torch load)."""
    from safetensors import safe_open

    total = 0
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                shape = st.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]
