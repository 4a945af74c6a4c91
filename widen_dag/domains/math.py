"""Math word problems (GSM8K, MATH-500, AIME): gold extraction, answer extraction, equivalence.

Equivalence has a fast exact path for plain numbers (thousands separators, currency and
units, fractions vs decimals, simple LaTeX) and otherwise asks math-verify. math-verify's
timeouts use ``signal.alarm``, which only works in a main thread and once froze the whole
process on ``2**2**2**2**2**2``: so it runs in a separate process, each call with its own
timeout, under a hard deadline after which the worker is killed and the call is "not
equivalent". Nothing here evaluates model output with eval/exec.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from typing import Any

from widen_dag.domains.base import FORMAT_INSTRUCTION, RawRecord, Verdict, answer_block_closed

log = logging.getLogger(__name__)

name = "math"
VERIFY_DEADLINE_S = 2.0
_STARTUP_GRACE_S = 20.0
MAX_EXPR_CHARS = 1_000  # longer "answers" are not answers; math-verify is never asked

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_ANSWER_IS_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer(?:\s+is\s*:?|\s*:)\s*([^\n]*)", re.IGNORECASE)
_HASHES_RE = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)  # GSM8K's own answer line
_TAG_RE = re.compile(r"</?[a-z_-]+>")
_GSM8K_GOLD_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_FRACTION_RE = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")
_LATEX_FRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*([+-]?\d+)\s*\}$")
_UNIT_TAIL_RE = re.compile(r"^(.*?\d)\s*(?:\\text\{\s*[A-Za-z ]+\}|\\mbox\{[A-Za-z ]+\}|[A-Za-z][A-Za-z. ]*)$")
_PERCENT_RE = re.compile(r"\\?%$")


def task_prompt(question: str) -> str:
    return (
        "Solve the following math problem. "
        f"{FORMAT_INSTRUCTION} Inside <answer> write the final answer as \\boxed{{...}}.\n\n"
        f"Problem: {question.strip()}"
    )


# ---- extraction ---------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed); None if none closes."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _clean(candidate: str) -> str:
    """An answer phrase without tags, markdown bold, $...$ and trailing punctuation:
    'The answer is: 18</answer>' and 'The answer is **18**.' both give '18'."""
    text = _TAG_RE.sub(" ", candidate).strip()
    text = text.replace("**", "").strip()
    text = re.split(r"\.\s+(?=[A-Z])", text)[0]  # 'The answer is 18. Let me check.': the first sentence
    text = text.rstrip(".,;:!").strip().strip("$").strip().rstrip(".,;:!").strip()
    return text


def extract_answer(text: str, last_number: bool = False) -> str | None:
    """The predicted answer, read as a user would: in the last <answer> block if the response
    has one (else in the whole text), the LAST of its answer statements wins, whichever form it
    takes: ``\\boxed{}``, GSM8K's '#### N' or 'The answer is ...' ("The answer is 5. No,
    \\boxed{6}" is 6; a later "The answer is: 18" beats an earlier \\boxed{17}). A closed
    block with no statement in it is the statement itself ('<answer>28</answer>' is 28,
    '<answer>Finn has 2 cards.</answer>' is 2) unless a statement follows it, or it begins one
    it never finishes ('<answer>The answer is:</answer>', an unclosed ``\\boxed{``). A phrase
    is read by ``answer_phrase``. Tags and trailing punctuation never count as part of it.

    With ``last_number`` (a dataset's ``answer_fallback``), a response with no <answer> tag and
    no statement is read by its last number, as lm-eval's GSM8K "flexible extract" does ("So,
    Gus has 28 shells." is 28). None means no answer (distinct from a wrong one)."""
    if not isinstance(text, str) or not text.strip():
        return None
    blocks = _ANSWER_BLOCK_RE.findall(text)
    if blocks:
        found = _last_statement(blocks[-1])
        if found:
            return found
        if answer_block_closed(text) and not _has_marker(blocks[-1]):
            # No statement in the final block: it is one itself, unless a statement follows it.
            after = text[text.rfind("</answer>") + len("</answer>") :]
            found = _last_statement(after) or _bare_answer(blocks[-1])
            if found:
                return found
    found = _last_statement(text)
    if found or not last_number or "<answer>" in text:
        return found
    return _last_number(_TAG_RE.sub(" ", text))


def _last_number(text: str) -> str | None:
    """The last number of a prose response ('So, Gus has 28 shells.' -> 28; 'ages 5-10' -> 10,
    a hyphen between numbers is no minus sign); None when the response writes LaTeX, whose
    numbers are parts of expressions ('\\frac{3}{4}' is not 4)."""
    text = text.replace("\u2212", "-")  # the Unicode minus sign
    if _LATEX_RE.search(text):
        return None
    numbers = _LAST_NUMBER_RE.findall(text)
    return numbers[-1].replace("$", "").rstrip(",") if numbers else None


def _bare_answer(block: str) -> str | None:
    """A block's whole content read as the answer, by its last sentence or line when it holds
    several ('Gus had 14. So he has 28.' -> 28; a list's '2. So he has 28.' -> 28): a number,
    math, or one word ('(C)', 'yes'); a sentence with neither ('I am not sure.') is no answer."""
    segments = [seg for seg in _SEGMENT_SPLIT_RE.split(_TAG_RE.sub(" ", block)) if seg.strip(" .,;:!")]
    if not segments:
        return None
    phrase = answer_phrase(_LIST_MARKER_RE.sub("", segments[-1]))
    if phrase and (re.search(r"\d", phrase) or _SYMBOLIC_RE.search(phrase) or " " not in phrase):
        return phrase
    return None


def _has_marker(text: str) -> bool:
    """Whether ``text`` begins an answer statement (``\\boxed{``, '####', 'The answer is'), read or not."""
    return bool(_BOXED_RE.search(text) or _HASHES_RE.search(text) or _ANSWER_IS_RE.search(text))


def _last_statement(text: str) -> str | None:
    candidates: list[tuple[int, str | None]] = []
    for m in _BOXED_RE.finditer(text):
        candidates.append((m.start(), _first_boxed(text[m.start() :])))
    for m in _HASHES_RE.finditer(text):
        candidates.append((m.start(), answer_phrase(m.group(1))))
    for m in _ANSWER_IS_RE.finditer(text):
        if not _BOXED_RE.search(m.group(1)):  # 'The answer is \\boxed{18}': the boxed candidate reads it
            candidates.append((m.start(), answer_phrase(m.group(1))))
    for _, answer in sorted(candidates, key=lambda c: c[0], reverse=True):
        if answer:
            return answer
    return None


def _first_boxed(text: str) -> str | None:
    """Content of the ``\\boxed{...}`` that ``text`` starts with (None if it never closes)."""
    m = _BOXED_RE.match(text)
    if not m:
        return None
    depth = 1
    for i in range(m.end(), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                content = text[m.end() : i].strip()
                # 'Write the final answer as \\boxed{...}': the instruction echoed, not an answer
                return None if _PLACEHOLDER_RE.match(content) else content
    return None


_PLACEHOLDER_RE = re.compile(r"^(?:\.{2,}|…|number|answer|your answer|final answer)?$", re.IGNORECASE)


_NUMBER_IN_PROSE_RE = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?")
_SYMBOLIC_RE = re.compile(r"[\\^{}_]|\bsqrt\b|\bpi\b")
# A minus sign only where no word or number precedes it ('5-10' is a range, not -10).
_LAST_NUMBER_RE = re.compile(r"(?:(?<![\w.])-)?(?<![\w.])\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_LATEX_RE = re.compile(r"\\[a-zA-Z]+|\$[^$\n]*[\\^{}][^$\n]*\$")
_SEGMENT_SPLIT_RE = re.compile(r"\n+|(?<=[.!?])\s+(?=\S)")
_LIST_MARKER_RE = re.compile(r"^\s*(?:\d+[.)]|[-*])\s+")


def answer_phrase(candidate: str) -> str | None:
    """The answer in a free-form answer phrase, as real instruct models write it:
    '18' -> 18; '20 * 4 = 80.' -> 80 (the result of a worked equation); '$160,000' and
    '960 dollars' stay for the number comparison (which reads 160000 and 960); 'Janet makes 18
    dollars every day' -> 18 (the first number of a prose sentence); symbolic answers
    ('\\frac{1}{2}', 'x^2 + 1') are kept whole; '(C)' stays as written."""
    text = _clean(candidate)
    if not text:
        return None
    if "=" in text:
        result = _clean(text.rsplit("=", 1)[1])
        if result:
            text = result
    if as_number(text) is not None or _SYMBOLIC_RE.search(text):
        return text
    words = re.findall(r"[A-Za-z]{2,}", text)
    numbers = _NUMBER_IN_PROSE_RE.findall(text)
    if words and numbers:
        return numbers[0].strip("$").rstrip(",")
    return text


def extract_gold(solution_or_answer: str) -> str:
    """Gold answer from GSM8K's '#### N', a MATH solution's \\boxed{}, or a bare answer."""
    text = (solution_or_answer or "").strip()
    if not text:
        raise ValueError("empty gold answer")
    m = _GSM8K_GOLD_RE.search(text)
    if m and "####" in text:
        gold = m.group(1).strip()
    else:
        gold = last_boxed(text) if "\\boxed" in text or "\\fbox" in text else text
    if not gold:
        raise ValueError(f"no gold answer in {text[:80]!r}")
    if len(gold) > MAX_EXPR_CHARS:
        raise ValueError(f"gold answer of {len(gold)} characters is too long")
    return gold


def normalize_gold(gold: str) -> str:
    return extract_gold(gold)


# ---- equivalence --------------------------------------------------------------------------
def _plain(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", " ").replace("\\$", "")
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    s = s.lstrip("$").rstrip(".").strip()
    return s


def as_number(s: str) -> Fraction | None:
    """A plain number (with thousands separators, currency, units, %) as an exact Fraction."""
    s = _plain(s)
    if not s or len(s) > 64:
        return None
    percent = bool(_PERCENT_RE.search(s))
    if percent:
        return None  # '18%' is ambiguous (18 or 0.18): leave it to math-verify
    unit = _UNIT_TAIL_RE.match(s)
    if unit:
        s = unit.group(1).strip()
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    try:
        if _NUMBER_RE.match(s):
            return Fraction(s)
        m = _FRACTION_RE.match(s)
        if m and int(m.group(2)) != 0:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _LATEX_FRAC_RE.match(s)
        if m and int(m.group(3)) != 0:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


class _VerifierProcess:
    """One long-lived ``python -m widen_dag.domains.math_verify_worker`` child.

    A child process rather than multiprocessing: nothing depends on the caller's
    ``__main__`` guard, and an overrunning call is ended by killing the child outright.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._warm = False  # has the current child answered once (paid its start-up)?

    def _get(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "widen_dag.domains.math_verify_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self._warm = False
        return self._proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def call(self, pred: str, gold: str, deadline: float) -> bool:
        with self._lock:
            proc = self._get()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"pred": pred, "gold": gold}).encode() + b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill()
                return False
            # The first call also pays for the child's start-up (importing sympy).
            limit = deadline + (0.0 if self._warm else _STARTUP_GRACE_S)
            ready, _, _ = select.select([proc.stdout], [], [], limit)
            if not ready:
                log.warning("math-verify overran %.1fs on %r vs %r: counted as not equivalent", limit, pred[:60], gold[:60])
                self._kill()
                return False
            line = proc.stdout.readline()
            if not line:
                self._kill()
                return False
            self._warm = True
            return bool(json.loads(line).get("equivalent", False))

    def close(self) -> None:
        with self._lock:
            self._kill()


_POOL = _VerifierProcess()
atexit.register(_POOL.close)


def is_equivalent(pred: str, gold: str) -> bool:
    """Whether a predicted answer equals the gold one (exact for numbers, symbolic otherwise).

    Bounded: returns within about 2 s whatever the input.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold or pred.lower() == "none" or len(pred) > MAX_EXPR_CHARS:
        return False
    a, b = as_number(pred), as_number(gold)
    if a is not None and b is not None:
        return a == b
    if _plain(pred) == _plain(gold):
        return True
    return _POOL.call(pred, gold, VERIFY_DEADLINE_S)


def verify(response: str, gold: str, question: str | None = None, answer_fallback: bool = False) -> Verdict:
    """``answer_fallback``: read a response with no answer block or statement by its last number."""
    answer = extract_answer(response, last_number=answer_fallback)
    if answer is None:
        return Verdict(correct=False, no_answer=True, detail="no answer found")
    ok = is_equivalent(answer, gold)
    return Verdict(correct=ok, no_answer=False, answer=answer, detail="equivalent" if ok else f"expected {gold}")


def records_from_rows(rows: list[Any], question_field: str, answer_field: str, id_field: str | None) -> list[RawRecord]:
    """Map rows of a JSONL/Parquet file to raw records using the configured field names."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            out.append(RawRecord(i, None, None, error=f"row is a {type(row).__name__}, not an object"))
            continue
        q, a = row.get(question_field), row.get(answer_field)
        missing = [f for f, v in ((question_field, q), (answer_field, a)) if v is None]
        error = f"missing field(s): {', '.join(missing)}" if missing else None
        # A question must be text; a gold answer may be text or a number (GSM8K-style exports).
        if error is None and not isinstance(q, str):
            error = f"field {question_field!r} must be a string, got {type(q).__name__}"
        if error is None and (isinstance(a, bool) or not isinstance(a, (str, int, float))):
            error = f"field {answer_field!r} must be a string or a number, got {type(a).__name__}"
        meta = {
            k: v for k, v in row.items() if k not in (question_field, answer_field) and isinstance(v, (str, int, float, bool))
        }
        sid = row.get(id_field) if id_field else None
        out.append(
            RawRecord(
                i,
                q if isinstance(q, str) else None,
                a if isinstance(a, str) else (None if a is None or error else str(a)),
                source_id=None if sid is None else str(sid),
                meta=meta,
                error=error,
            )
        )
    return out
