"""Instruction following (IFEval / Multi-IF): verifiable constraints on a free-text response.

A problem is a request plus constraints: ``instruction_id_list`` and one ``kwargs`` dict per
id, exactly as IFEval and Multi-IF write them. The gold is their JSON text
``{"instruction_id_list": [...], "kwargs": [...]}``. Multi-IF is multi-turn: turn k of an
item is its own problem whose question holds the user turns 1..k and whose gold holds every
constraint accumulated up to k (Multi-IF's own lists are already cumulative).

The checkers are lm-eval's copy of Google's IFEval instruction registry
(``lm_eval.tasks.ifeval``), not a rewrite. Scoring follows lm-eval's strict and loose rules
(loose also tries the response without its first/last line and without ``*``). The scored
text is the final ``<answer>`` block; a response without one is a no-answer, unless the
dataset set ``answer_fallback`` (then the whole response is scored). A verdict is correct
when the response follows every constraint under the loose rule, the paper's reported
metric (loose prompt-level); ``score`` gives all four numbers.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from widen_dag.domains.base import FORMAT_INSTRUCTION, RawRecord, Verdict

name = "instruction_following"

MAX_TURNS = 3
_ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# The search writes answer nodes with this prefill (search.thoughts.PREFILLS); it is not
# part of the response the constraints apply to.
_ANSWER_PREFILL_RE = re.compile(r"^\s*the answer is\s*:\s*", re.IGNORECASE)
# An untrained Punkt model (no abbreviation list) for IFEval's sentence counter, used only
# when NLTK's English punkt_tab data is not installed (it is downloaded, never shipped on PyPI).
_PUNKT_FALLBACK = Path(__file__).parent / "nltk_data"


class ConstraintError(ValueError):
    """Constraints that cannot be checked: unknown instruction id, kwargs that do not parse."""


@functools.cache
def _ifeval() -> tuple[ModuleType, ModuleType]:
    """lm-eval's (instructions_registry, instructions_util), imported on first use.

    lm-eval tries to download punkt_tab at import when NLTK cannot find it; NLTK's own data
    wins when present, the bundled fallback keeps the import offline otherwise.

    The case checkers (english_lowercase, english_capital) and response_language ask langdetect,
    which draws fresh random numbers at every call unless its factory is seeded: "\\boxed{3"
    was English 3 times in 50 and the same response scored differently between two runs of the
    demo. Seeded as langdetect documents, a text gets one verdict."""
    import langdetect
    import nltk

    langdetect.DetectorFactory.seed = 0
    if str(_PUNKT_FALLBACK) not in nltk.data.path:
        nltk.data.path.append(str(_PUNKT_FALLBACK))
    from lm_eval.tasks.ifeval import instructions_registry, instructions_util

    return instructions_registry, instructions_util


def supported_instructions() -> list[str]:
    return sorted(_ifeval()[0].INSTRUCTION_DICT)


@dataclass(frozen=True)
class Constraints:
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    def to_gold(self, answer_fallback: bool = False) -> str:
        gold: dict[str, Any] = {"instruction_id_list": list(self.instruction_id_list), "kwargs": list(self.kwargs)}
        if answer_fallback:
            gold["answer_fallback"] = True
        return json.dumps(gold, sort_keys=True, ensure_ascii=False)


def _checker(instruction_id: str, kwargs: dict[str, Any], prompt: str) -> Any:
    """One built checker, as lm-eval builds it (falsy kwargs dropped, ``prompt`` when asked)."""
    registry = _ifeval()[0].INSTRUCTION_DICT
    if instruction_id not in registry:
        raise ConstraintError(f"unknown instruction id {instruction_id!r}")
    checker = registry[instruction_id](instruction_id)
    given = {k: v for k, v in kwargs.items() if v}
    # A missing argument would make lm-eval draw a random one: the constraint is undefined.
    missing = [k for k in checker.get_instruction_args_keys() if k not in given and k != "prompt"]
    if missing:
        raise ConstraintError(f"{instruction_id}: kwargs lack {', '.join(missing)}")
    state = random.getstate()  # build_description draws random text for its description only
    try:
        checker.build_description(**given)
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
    except (TypeError, ValueError, KeyError) as err:
        raise ConstraintError(f"{instruction_id}: kwargs {json.dumps(kwargs, default=str)[:120]} do not parse: {err}") from None
    finally:
        random.setstate(state)
    return checker


def _as_kwargs(value: Any, instruction_id: str) -> dict[str, Any]:
    if isinstance(value, str):  # Multi-IF stores each kwargs dict as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConstraintError(f"{instruction_id}: kwargs are not JSON: {err.msg}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConstraintError(f"{instruction_id}: kwargs must be an object, got {type(value).__name__}")
    return value


def constraints_from(instruction_id_list: Any, kwargs: Any) -> Constraints:
    """Validated constraints: known ids, one kwargs dict per id, each builds its checker."""
    if isinstance(instruction_id_list, str):
        try:
            instruction_id_list = json.loads(instruction_id_list)
        except json.JSONDecodeError as err:
            raise ConstraintError(f"instruction_id_list is not JSON: {err.msg}") from None
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as err:
            raise ConstraintError(f"kwargs are not JSON: {err.msg}") from None
    if not isinstance(instruction_id_list, list) or not instruction_id_list:
        raise ConstraintError("instruction_id_list must be a non-empty list")
    if not all(isinstance(i, str) for i in instruction_id_list):
        raise ConstraintError("instruction_id_list must hold strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(instruction_id_list):
        n = len(kwargs) if isinstance(kwargs, list) else "no"
        raise ConstraintError(f"kwargs must be a list with one entry per instruction ({len(instruction_id_list)}), got {n}")
    parsed = tuple(_as_kwargs(kw, iid) for iid, kw in zip(instruction_id_list, kwargs, strict=True))
    for iid, kw in zip(instruction_id_list, parsed, strict=True):
        _checker(iid, kw, "")
    return Constraints(tuple(instruction_id_list), parsed)


def parse_gold(gold: str) -> tuple[Constraints, bool]:
    """(constraints, answer_fallback) from the gold JSON text."""
    try:
        data = json.loads(gold)
    except json.JSONDecodeError as err:
        raise ConstraintError(f"gold is not JSON: {err.msg}") from None
    if not isinstance(data, dict) or "instruction_id_list" not in data or "kwargs" not in data:
        raise ConstraintError("gold must be an object with instruction_id_list and kwargs")
    return constraints_from(data["instruction_id_list"], data["kwargs"]), bool(data.get("answer_fallback", False))


def normalize_gold(gold: str) -> str:
    constraints, fallback = parse_gold(gold)
    return constraints.to_gold(fallback)


def task_prompt(question: str) -> str:
    return (
        "Respond to the request below and follow every instruction in it. "
        f"{FORMAT_INSTRUCTION} Inside <answer> write only your final response; the instructions apply to it.\n\n"
        f"{question.strip()}"
    )


def render_turns(prompts: list[str]) -> str:
    """The question of turn k: the user turns so far, the last one to be answered."""
    if len(prompts) == 1:
        return prompts[0].strip()
    parts = [f"Request {i}: {p.strip()}" for i, p in enumerate(prompts, 1)]
    return "\n\n".join(parts) + "\n\nAnswer the last request; every instruction of the earlier requests still applies."


def scored_text(response: str, answer_fallback: bool = False) -> str | None:
    """The text the constraints apply to: the last closed <answer> block (minus the search's
    answer prefill), the whole response with ``answer_fallback``, else None (no answer)."""
    if not isinstance(response, str):
        return None
    blocks = _ANSWER_BLOCK_RE.findall(response)
    if blocks:
        return _ANSWER_PREFILL_RE.sub("", blocks[-1], count=1).strip()
    return response.strip() if answer_fallback else None


def _loose_variants(response: str) -> list[str]:
    """lm-eval's loose rule: also without the first and/or last line, and without '*'."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def _follows(checker: Any, text: str) -> bool:
    if not text.strip():
        return False
    try:
        return bool(checker.check_following(text))
    except Exception:  # a checker that fails on odd text (langdetect, JSON) counts as not followed
        return False


@dataclass(frozen=True)
class IFScore:
    instruction_id_list: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def score(text: str, constraints: Constraints, prompt: str = "") -> IFScore:
    """Strict and loose, per instruction, of ``text`` (already the scored text)."""
    variants = _loose_variants(text)
    strict, loose = [], []
    for iid, kw in zip(constraints.instruction_id_list, constraints.kwargs, strict=True):
        checker = _checker(iid, kw, prompt)
        strict.append(_follows(checker, text))
        loose.append(any(_follows(checker, v) for v in variants))
    return IFScore(constraints.instruction_id_list, tuple(strict), tuple(loose))


def verify(response: str, gold: str, question: str | None = None, answer_fallback: bool = False) -> Verdict:
    """``answer_fallback`` (or the gold's own flag, set by the loader): score the whole response
    when it has no <answer> block."""
    constraints, fallback = parse_gold(gold)
    text = scored_text(response, fallback or answer_fallback)
    if text is None:
        return Verdict(False, True, None, "no <answer> block")
    if not text:
        return Verdict(False, True, None, "empty <answer> block")
    s = score(text, constraints, question or "")
    detail = json.dumps(
        {"prompt_strict": s.prompt_strict, "prompt_loose": s.prompt_loose, "strict": list(s.strict), "loose": list(s.loose)}
    )
    return Verdict(s.prompt_loose, False, text[:500], detail)


# ---- loaders ------------------------------------------------------------------------------
def _turn_prompt(cell: Any) -> str | None:
    """Multi-IF writes each turn as a chat message {"role": "user", "content": ...}."""
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        return None
    if isinstance(cell, dict):
        return cell.get("content")
    try:
        msg = json.loads(cell)
    except (TypeError, json.JSONDecodeError):
        return str(cell)
    return msg.get("content") if isinstance(msg, dict) else str(cell)


def _multi_if_records(i: int, row: dict[str, Any], answer_fallback: bool) -> list[RawRecord]:
    """Turns 1..3 of one Multi-IF row, as records numbered 3*i + turn - 1."""
    out: list[RawRecord] = []
    prompts: list[str] = []
    key = row.get("key") or None
    meta_base = {"item": i, "key": key, "language": row.get("language") or None}
    for turn in range(1, MAX_TURNS + 1):
        index = MAX_TURNS * i + turn - 1
        source_id = f"{key}:turn{turn}" if key else None
        try:
            prompt = _turn_prompt(row.get(f"turn_{turn}_prompt"))
        except AttributeError:
            prompt = None
        if prompt is None:
            if turn == 1:
                out.append(RawRecord(index, None, None, source_id, meta_base, error="turn 1 has no prompt"))
            break  # an item may stop before turn 3
        prompts.append(prompt)
        meta = {**meta_base, "turn": turn, "turn_prompts": list(prompts)}
        question = render_turns(prompts)
        try:
            c = constraints_from(row.get(f"turn_{turn}_instruction_id_list"), row.get(f"turn_{turn}_kwargs"))
        except ConstraintError as err:
            out.append(RawRecord(index, question, None, source_id, meta, error=f"turn {turn}: {err}"))
            continue
        out.append(RawRecord(index, question, c.to_gold(answer_fallback), source_id, meta))
    return out


def records_from_rows(rows: list[Any], answer_fallback: bool = False) -> list[RawRecord]:
    """Records from Multi-IF rows (``turn_k_*`` columns) or IFEval rows (``prompt``,
    ``instruction_id_list``, ``kwargs``); a bad row becomes a record with ``error`` set."""
    out: list[RawRecord] = []
    for i, row in enumerate(rows):
        if isinstance(row, RawRecord):  # already unreadable at the file level
            out.append(RawRecord(row.row_index, None, None, error=row.error))
            continue
        if not isinstance(row, dict):
            out.append(RawRecord(i, None, None, error=f"row is a {type(row).__name__}, not an object"))
            continue
        if "turn_1_prompt" in row:
            out.extend(_multi_if_records(i, row, answer_fallback))
            continue
        key = row.get("key")
        source_id = None if key is None else str(key)
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            out.append(RawRecord(i, None, None, source_id, error="no prompt"))
            continue
        try:
            c = constraints_from(row.get("instruction_id_list"), row.get("kwargs"))
        except ConstraintError as err:
            out.append(RawRecord(i, prompt, None, source_id, error=str(err)))
            continue
        meta = {"language": row.get("language")} if row.get("language") else {}
        out.append(RawRecord(i, prompt, c.to_gold(answer_fallback), source_id, meta))
    return out


def read_rows(path: str | Path) -> list[Any]:
    """Rows of a Multi-IF CSV or an IFEval JSONL file; an unreadable row is a RawRecord with its error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"instruction-following file {p} does not exist (relative paths are read from {Path.cwd()})")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{p}: not UTF-8 (byte {err.start})") from None
    if p.suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header or "turn_1_prompt" not in header:
            raise ValueError(f"{p}: not a Multi-IF CSV (no turn_1_prompt column)")
        rows: list[Any] = []
        for i, cells in enumerate(reader):
            if len(cells) != len(header):
                rows.append(
                    RawRecord(MAX_TURNS * i, None, None, error=f"CSV row {i + 2}: {len(cells)} fields, expected {len(header)}")
                )
            else:
                rows.append(dict(zip(header, cells, strict=True)))
        return rows
    if p.suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                rows.append(RawRecord(i, None, None, error="empty line"))
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                rows.append(RawRecord(i, None, None, error=f"invalid JSON: {err.msg} at column {err.colno}"))
        return rows
    raise ValueError(f"{p}: expected a Multi-IF .csv or an IFEval .jsonl")


def records_from_file(path: str | Path, answer_fallback: bool = False) -> list[RawRecord]:
    return records_from_rows(read_rows(path), answer_fallback)
