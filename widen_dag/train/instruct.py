"""The instruct-shaped stand-in models of ``tiny_instruct``: they behave like real instruct
models rather than like models trained on the search's node format.

* tokenizers with real chat-template conventions: ChatML (``<|im_start|>``, ``<|im_end|>`` as
  EOS, as Qwen2.5) for the policy and student, a Llama-3-style header / ``<|eot_id|>``
  template for the critic; tags are ordinary text (several tokens), as in a real vocabulary;
* training texts in the styles real models write: prose steps, ``\\boxed{}``, "The answer is
  18.", GSM8K's ``#### 18``, chatter ("Sure! Let's solve this."), and, as a model that read the
  format instruction writes it, loosely tagged thoughts that sometimes close the last tag and
  sometimes just end the turn. Never the search's exact node format (its prefills, its fixed
  reflection sentence, its action graph); some solutions hold a slip, so search finds wrong paths.

The search gets typed thoughts out of them by the chat template, prefills and stop strings
alone, as the paper does with un-finetuned instruct models.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

from widen_dag.domains import blocksworld, synthetic

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
STYLES = {
    # style: (special tokens, eos, bos, pad, template)
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "<|endoftext|>", CHATML_TEMPLATE),
    "llama3": (
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"],
        "<|eot_id|>",
        "<|begin_of_text|>",
        "<|finetune_right_pad_id|>",
        LLAMA3_TEMPLATE,
    ),
}

_CHATTER = ("Sure! Let's solve this.", "Let's think step by step.", "Okay, let me work through it.", "Here is my solution.")
_MATH_LINE_RE = re.compile(r"^(\d+) ([+*-]) (\d+) = <<[^>]*>>(\d+)$")


def _slip(value: int, rng: random.Random) -> int:
    wrong = value + rng.choice([-2, -1, 1, 2, 10])
    return wrong if wrong >= 0 and wrong != value else value + 1


def math_steps(gsm8k_answer: str) -> tuple[list[tuple[int, str, int, int]], str]:
    """The (left, op, right, result) steps and the gold of a GSM8K-format worked answer."""
    lines = gsm8k_answer.strip().splitlines()
    steps = []
    for line in lines[:-1]:
        m = _MATH_LINE_RE.match(line.strip())
        if m:
            steps.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return steps, lines[-1].split("####")[-1].strip()


def math_response(steps: list[tuple[int, str, int, int]], gold: str, rng: random.Random, error_rate: float) -> str:
    """One free-form solution; with probability ``error_rate`` one step is computed wrong and
    the error carries to the (wrong) final answer."""
    slip_at = rng.randrange(len(steps)) if steps and rng.random() < error_rate else -1
    eqs, carry = [], None
    for i, (a, op, b, _result) in enumerate(steps):
        left = carry if carry is not None else a
        value = {"+": left + b, "-": left - b, "*": left * b}[op]
        if i == slip_at:
            value = _slip(value, rng)
        eqs.append(f"{left} {op} {b} = {value}")
        carry = value
    final = str(carry) if carry is not None else gold
    style = rng.choice(["prose", "steps", "gsm8k", "tagged", "tagged"])
    lead = [rng.choice(_CHATTER)] if rng.random() < 0.3 else []
    if style == "prose":
        body = [f"{'First' if i == 0 else rng.choice(['Then', 'Next', 'Now'])}, {e}." for i, e in enumerate(eqs)]
        end = rng.choice([f"The answer is \\boxed{{{final}}}.", f"So the answer is {final}.", f"The answer is {final}."])
        return "\n\n".join(lead + body + [end])
    if style == "steps":
        body = [f"Step {i + 1}: {e}" for i, e in enumerate(eqs)]
        return "\n".join(lead + body + [rng.choice([f"The answer is: {final}", f"The answer is \\boxed{{{final}}}."])])
    if style == "gsm8k":
        return "\n".join(lead + eqs + [f"#### {final}"])
    # A model that read the format instruction: loosely tagged, its own phrasing; the last
    # tag is closed or the turn just ends.
    parts = [f"<thinking>{rng.choice(['', 'We compute ', 'Compute: '])}{e}.</thinking>" for e in eqs]
    if rng.random() < 0.4:
        parts.append(f"<double-check>{rng.choice(['Checking: ', 'Yes, '])}{eqs[-1]}.</double-check>" if eqs else "")
    shown = rng.choice(["\\boxed{" + final + "}", final])
    answer = f"<answer>The answer is: {shown}"
    parts.append(answer + ("</answer>" if rng.random() < 0.5 else ""))
    return "\n\n".join(lead + [p for p in parts if p])


def plan_response(instance: blocksworld.Instance, plan: list[blocksworld.Action], rng: random.Random, error_rate: float) -> str:
    """A free-form Blocksworld answer; with probability ``error_rate`` two steps are swapped
    or one is left out (a plan that fails the validator)."""
    acts = list(plan)
    if acts and rng.random() < error_rate:
        if len(acts) > 1 and rng.random() < 0.5:
            i = rng.randrange(len(acts) - 1)
            acts[i], acts[i + 1] = acts[i + 1], acts[i]
        else:
            acts.pop(rng.randrange(len(acts)))
    lines = [a.english() for a in acts]
    style = rng.choice(["list", "prose", "tagged", "tagged"])
    lead = [rng.choice(_CHATTER)] if rng.random() < 0.3 else []
    if style == "list":
        return "\n".join(lead + ["Here is the plan:"] + [f"{i + 1}. {x}" for i, x in enumerate(lines)] + ["[PLAN END]"])
    if style == "prose":
        return "\n\n".join(lead + lines + ["That reaches the goal."])
    parts = [f"<thinking>{rng.choice(['I ', 'Next I ', ''])}{x}.</thinking>" for x in lines[:2]]
    answer = "<answer>The answer is:\n" + "\n".join(lines)
    parts.append(answer + ("</answer>" if rng.random() < 0.5 else ""))
    return "\n\n".join(lead + parts)


def if_worked(task: synthetic.IFTask) -> tuple[list[str], str]:
    """An instruction-following task's worked arithmetic: its equations ("a op b = r") and the
    final number, as every response to it writes them."""
    steps, gold = math_steps(task.answer)
    return [f"{a} {op} {b} = {r}" for a, op, b, r in steps], gold


def if_content(task: synthetic.IFTask, rng: random.Random, skip: str | None = None) -> str:
    """The final response to an instruction-following task: the worked arithmetic in one of a
    few phrasings, shaped by every constraint of the task except the kind ``skip``."""
    kinds = {c.kind for c in task.constraints} - {skip}
    eqs, gold = if_worked(task)
    if "short" in kinds:
        body = rng.choice([f"So, the result is {gold}.", f"Well, it is {gold}."])
    elif "bullets" in kinds:
        body = "\n".join(f"* {e}" for e in eqs) + f"\nSo, the result is {gold}."
    else:
        body = rng.choice(
            [
                ". ".join(f"{'First' if i == 0 else 'Then'}, {e}" for i, e in enumerate(eqs)) + f". The result is {gold}.",
                "We get " + " and ".join(eqs) + f", so the result is {gold}.",
            ]
        )
    # Every phrasing has a capital and a comma, so ignoring `lower` or `no_comma` breaks it.
    if "no_comma" in kinds:
        body = body.replace(",", "")
    if "lower" in kinds:
        body = body.lower()
    for c in task.constraints:
        if c.kind == "end" and "end" in kinds:
            body = f"{body} {c.kwargs['end_phrase']}"
    return f'"{body}"' if "quote" in kinds else body


def if_response(task: synthetic.IFTask, rng: random.Random, error_rate: float) -> str:
    """A free-form answer to an instruction-following task: perhaps some chatter and worked
    steps, then the constrained response in an answer block (left open now and then, a
    no-answer). With probability ``error_rate`` one constraint is ignored."""
    skip = rng.choice(task.constraints).kind if rng.random() < error_rate else None
    lead = [rng.choice(_CHATTER)] if rng.random() < 0.3 else []
    thinking = [f"<thinking>{rng.choice(['', 'We compute '])}{e}.</thinking>" for e in if_worked(task)[0]]
    answer = f"<answer>The answer is: {if_content(task, rng, skip)}"
    answer += "</answer>" if rng.random() < 0.9 else ""
    return "\n\n".join(lead + (thinking if rng.random() < 0.5 else []) + [answer])


def training_pairs(
    math_rows: Iterable[dict],
    bw_rows: Iterable[dict],
    rng: random.Random,
    error_rate: float,
    math_prompt,
    bw_prompt,
    if_rows: Iterable[synthetic.IFTask] = (),
    if_prompt=None,
) -> list[tuple[str, str]]:
    """(user turn, assistant turn) pairs from GSM8K-format rows, PlanBench-format rows and
    instruction-following tasks."""
    out = []
    for r in math_rows:
        steps, gold = math_steps(r["answer"])
        out.append((math_prompt(r["question"]), math_response(steps, gold, rng, error_rate)))
    for r in bw_rows:
        instance = blocksworld.parse_statement(r["query"])
        plan = blocksworld.parse_plan(r["ground_truth_plan"])
        out.append((bw_prompt(_statement(r["query"])), plan_response(instance, plan, rng, error_rate)))
    for task in if_rows:
        out.append((if_prompt(task.prompt), if_response(task, rng, error_rate)))
    rng.shuffle(out)
    return out


def _statement(query: str) -> str:
    q = query.rstrip()
    for tail in ("[PLAN]", "My plan is as follows:"):
        if q.endswith(tail):
            q = q[: -len(tail)].rstrip()
    return q


def train_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: Path, style: str):
    """Byte-level BPE with the style's special tokens and chat template; tags are plain text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, eos, bos, pad, template = STYLES[style]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token=pad)
    fast.chat_template = template
    fast.padding_side = "left"
    fast.save_pretrained(out_dir)
    return fast
