"""The bad-input corpus: each case feeds one kind of broken input to the entry point that
meets it in a run, and says how it must be handled:

* ``quarantined``: the row goes to `problem_quarantine` with a reason, the rest is staged;
* ``rejected``: one clear, one-line error of the project's own types, naming the row or field;
* ``handled``: a verdict or a result (e.g. a no-answer), bounded in time, never an exception.

Shared by tests/reliability/test_bad_inputs.py and bench/reliability.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from widen_dag.datasets.sql import SqlModelError, load_models
from widen_dag.domains import blocksworld
from widen_dag.domains import math as math_domain
from widen_dag.domains.base import Verdict
from widen_dag.domains.problems import ProblemSourceError, inbox_files, load_shard, stage_problems
from widen_dag.llm.base import GenerationConfigError
from widen_dag.llm.loading import resolve_model_path
from widen_dag.profiles import DatasetConfig, FileSource, ProblemsConfig, ProfileError, load_profile, parse_profile
from widen_dag.search.thoughts import is_well_formed
from widen_dag.train.preference import PairDataError, validate_pairs

# The errors a user may see: the project's own, each naming what is wrong.
CLEAR_ERRORS = (
    ProfileError,
    ProblemSourceError,
    SqlModelError,
    GenerationConfigError,
    PairDataError,
    blocksworld.BlocksworldError,
)


@dataclass(frozen=True)
class Outcome:
    kind: str  # quarantined | rejected | handled
    message: str
    seconds: float = 0.0


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # the Outcome.kind it must get
    contains: str  # a fragment the reason / message / verdict detail must hold
    run: Callable[[Path], Outcome]


# ---- problem files -> staging --------------------------------------------------------------
def _stage(
    tmp: Path,
    lines: list[bytes] | None = None,
    *,
    parquet: pl.DataFrame | None = None,
    domain: str = "math",
    id_field: str | None = None,
) -> Outcome:
    path = tmp / ("problems.parquet" if parquet is not None else "problems.jsonl")
    if parquet is not None:
        parquet.write_parquet(path)
    else:
        path.write_bytes(b"".join(line + b"\n" for line in lines or []))
    ds = DatasetConfig(name="bad", domain=domain, source=FileSource(path=str(path), id_field=id_field))
    staged, quarantine = stage_problems(load_shard(ds, 0, 0), ProblemsConfig(max_question_chars=20_000), {"bad": "train"})
    if quarantine.height:
        return Outcome(
            "quarantined",
            "; ".join(f"row {r}: {why}" for r, why in zip(quarantine["row_index"], quarantine["reason"], strict=True)),
        )
    return Outcome("handled", f"{staged.height} staged; meta={staged['meta'].to_list()}")


def _row(**fields) -> bytes:
    return json.dumps(fields).encode()


GOOD = {"question": "What is 2 + 3?", "answer": "5"}


def _file_case(name: str, contains: str, lines: list[bytes], expect: str = "quarantined", **kw) -> Case:
    return Case(name, expect, contains, lambda tmp: _stage(tmp, lines, **kw))


# ---- verifiers and model outputs ------------------------------------------------------------
def _verdict(verify: Callable[[], Verdict]) -> Callable[[Path], Outcome]:
    """A verifier call as a case: its verdict as text, and how long it took."""

    def run(_: Path) -> Outcome:
        start = time.perf_counter()
        v = verify()
        return Outcome("handled", f"correct={v.correct} no_answer={v.no_answer} detail={v.detail}", time.perf_counter() - start)

    return run


def _math_verdict(response: str, gold: str = "5") -> Callable[[Path], Outcome]:
    return _verdict(lambda: math_domain.verify(response, gold))


STATEMENT = (
    "As initial conditions I have that, the red block is clear, the hand is empty, the red block is on top of "
    "the blue block and the blue block is on the table.\nMy goal is to have that the blue block is on top of the red block."
)


def _plan_verdict(response: str) -> Callable[[Path], Outcome]:
    return _verdict(lambda: blocksworld.verify(response, "(unstack red blue)", STATEMENT))


def _raises(fn: Callable[[Path], object]) -> Callable[[Path], Outcome]:
    def run(tmp: Path) -> Outcome:
        try:
            fn(tmp)
        except CLEAR_ERRORS as err:
            return Outcome("rejected", str(err))
        return Outcome("handled", "accepted")

    return run


def _corrupt_parquet(tmp: Path) -> object:
    path = tmp / "problems.parquet"
    path.write_bytes(b"PAR1 truncated")
    return load_shard(DatasetConfig(name="bad", domain="math", source=FileSource(path=str(path))), 0, 0)


def _json_array(tmp: Path) -> Outcome:
    path = tmp / "problems.json"
    path.write_text(json.dumps([GOOD, {"question": "What is 1 + 1?", "answer": 2}]))
    ds = DatasetConfig(name="bad", domain="math", source=FileSource(path=str(path)))
    staged, quarantine = stage_problems(load_shard(ds, 0, 0), ProblemsConfig(), {"bad": "train"})
    return Outcome("quarantined" if quarantine.height else "handled", f"{staged.height} staged")


def _inbox_name(name: str) -> Callable[[Path], Outcome]:
    def run(tmp: Path) -> Outcome:
        (tmp / name).write_text(json.dumps(GOOD) + "\n")
        taken, refused = inbox_files(tmp)
        return Outcome("rejected", "; ".join(refused)) if refused else Outcome("handled", str(taken))

    return run


def _pddl(tmp: Path) -> object:
    return blocksworld.parse_pddl_problem(
        "(define (problem p) (:domain blocksworld) (:objects a b) (:init (levitating a) (handempty)) (:goal (and (on a b))))"
    )


def _profile_yaml(text: str) -> Callable[[Path], object]:
    def go(tmp: Path) -> object:
        path = tmp / "profile.yaml"
        path.write_text(text)
        return load_profile(str(path))

    return go


UNCLOSED = "<thinking>2 + 3 = 5<answer>The answer is: \\boxed{5}"
_TINY = {"name": "t", "datasets": [{"name": "a", "domain": "arithmetic", "source": {"kind": "arithmetic"}}]}


def _sql(text: str) -> Callable[[Path], object]:
    def go(tmp: Path) -> object:
        (tmp / "sql").mkdir(exist_ok=True)
        (tmp / "sql" / "bad_model.sql").write_text(text)
        return load_models(tmp / "sql")

    return go


def _csv_file(tmp: Path) -> object:
    (tmp / "p.csv").write_text("q,a\n")
    return load_shard(DatasetConfig(name="x", domain="math", source=FileSource(path=str(tmp / "p.csv"))), 0, 0)


def _pickle_checkpoint(tmp: Path) -> object:
    folder = tmp / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    return resolve_model_path(str(folder))


CASES: list[Case] = [
    # problem files
    _file_case("missing question field", "missing field(s): question", [_row(answer="5"), _row(**GOOD)]),
    _file_case("missing answer field", "missing field(s): answer", [_row(question="What is 2 + 3?"), _row(**GOOD)]),
    _file_case(
        "extra fields are kept in meta", '"difficulty": "easy"', [_row(**GOOD, difficulty="easy", level=3)], expect="handled"
    ),
    _file_case("question is a number", "must be a string, got int", [_row(question=42, answer="5")]),
    _file_case("question is a list", "must be a string, got list", [_row(question=["a", "b"], answer="5")]),
    _file_case("answer is an object", "must be a string or a number, got dict", [_row(question="q?", answer={"x": 1})]),
    _file_case("answer is a boolean", "got bool", [_row(question="q?", answer=True)]),
    _file_case("empty question", "empty question", [_row(question="", answer="5")]),
    _file_case("whitespace question", "empty question", [_row(question="  \n\t ", answer="5")]),
    _file_case("empty answer", "empty gold answer", [_row(question="What is 2 + 3?", answer=" ")]),
    _file_case("empty line", "empty line", [b"", _row(**GOOD)]),
    _file_case(
        "invalid JSON",
        "invalid JSON",
        [b'{"question": "What is 2 + 3?", "answer": '],
    ),
    _file_case("JSON array row", "row is a list, not an object", [b'["What is 2 + 3?", "5"]']),
    _file_case("1 MB question", "over max_question_chars", [_row(question="x" * 1_000_000, answer="5")]),
    _file_case("invalid UTF-8", "undecodable bytes (utf-8)", [b'{"question": "caf\xe9?", "answer": "5"}']),
    _file_case("U+FFFD in question", "U+FFFD", [_row(question="What is \ufffd + 3?", answer="5")]),
    _file_case("NaN answer", "gold answer does not parse", [b'{"question": "What is 2 + 3?", "answer": NaN}']),
    _file_case("Infinity answer", "gold answer does not parse", [b'{"question": "What is 2 + 3?", "answer": Infinity}']),
    _file_case("None as answer text", "gold answer does not parse", [_row(question="What is 2 + 3?", answer="None")]),
    _file_case(
        "duplicate ids, other content",
        "duplicate source id 'p1'",
        [_row(id="p1", **GOOD), _row(id="p1", question="What is 9 + 9?", answer="18")],
        id_field="id",
    ),
    _file_case("duplicate rows", "duplicate of", [_row(**GOOD), _row(**GOOD)]),
    _file_case("LaTeX bomb as gold", "gold answer does not parse", [_row(question="q?", answer="\\frac{" * 30_000)]),
    _file_case(
        "arithmetic gold not an integer",
        "arithmetic gold must be an integer",
        [_row(question="Ann has 2 pens. How many?", answer="2.5")],
        domain="arithmetic",
    ),
    Case(
        "blocksworld gold with unknown action",
        "quarantined",
        "gold answer does not parse",
        lambda tmp: _stage(tmp, [_row(question=STATEMENT, answer="(teleport red blue)")], domain="blocksworld"),
    ),
    Case(
        "parquet without the answer column",
        "rejected",
        "columns found: ['question']",
        _raises(lambda tmp: _stage(tmp, parquet=pl.DataFrame({"question": ["What is 2 + 3?"]}))),
    ),
    Case(
        "parquet with other column names",
        "rejected",
        "no row has the fields ['question', 'answer']",
        _raises(lambda tmp: _stage(tmp, parquet=pl.DataFrame({"problem": ["What is 2 + 3?"], "solution": ["5"]}))),
    ),
    Case("corrupt parquet", "rejected", "problems.parquet: not a readable Parquet file", _raises(_corrupt_parquet)),
    _file_case(
        "UTF-8 BOM before the first row",
        "2 staged",
        [b"\xef\xbb\xbf" + _row(**GOOD), _row(question="What is 1 + 1?", answer="2")],
        expect="handled",
    ),
    Case("JSON array file", "handled", "2 staged", _json_array),
    _file_case(
        "golds 7 and 7.0 for one question",
        "duplicate of",
        [_row(question="What is 3 + 4?", answer="7"), _row(question="What is 3 + 4?", answer="7.0")],
    ),
    _file_case(
        "conflicting golds for one question",
        "conflicting gold answers for one question: '7'",
        [_row(question="What is 3 + 4?", answer="7"), _row(question="What is 3 + 4?", answer="8"), _row(**GOOD)],
    ),
    Case("inbox file name starting with '-'", "rejected", "starts with '-'", _inbox_name("-rf.jsonl")),
    Case("inbox file name with '...'", "rejected", "holds '..'", _inbox_name("a...jsonl")),
    Case(
        "problem file missing",
        "rejected",
        "does not exist",
        _raises(
            lambda tmp: load_shard(DatasetConfig(name="x", domain="math", source=FileSource(path=str(tmp / "nope.jsonl"))), 0, 0)
        ),
    ),
    Case("problem file of another format", "rejected", "expected .jsonl, .json or .parquet", _raises(_csv_file)),
    # verifiers and model outputs
    Case(
        "LaTeX bomb in a model answer",
        "handled",
        "correct=False",
        _math_verdict("\\boxed{" + "\\frac{1}{" * 5000 + "}" * 5000 + "}"),
    ),
    Case("power tower in a model answer", "handled", "correct=False", _math_verdict("\\boxed{9^{9^{9^{9^{9^{9}}}}}}")),
    Case(
        "output without closing tags",
        "handled",
        "well_formed=False",
        lambda _: Outcome("handled", "well_formed=" + str(is_well_formed(UNCLOSED))),
    ),
    Case("output cut at max tokens", "handled", "no_answer=True", _math_verdict("<thinking>" + "and then " * 20_000)),
    Case("answer without a box or number", "handled", "no_answer=True", _math_verdict("<answer>I am not sure.</answer>")),
    # no recognisable action line: a no-answer (chatty lines are skipped), never a crash
    Case("plan with an unknown action", "handled", "no plan found", _plan_verdict("<answer>(teleport red blue)</answer>")),
    Case("plan with a wrong arity", "handled", "correct=False", _plan_verdict("<answer>(unstack red)</answer>")),
    Case("plan that breaks a precondition", "handled", "correct=False", _plan_verdict("<answer>(pick-up blue)</answer>")),
    Case("PDDL with an unknown predicate", "rejected", "levitating", _raises(_pddl)),
    # configuration, SQL, checkpoints, training data
    Case("profile with a typo", "rejected", "serach", _raises(_profile_yaml("name: t\nserach: {rollouts: 4}\ndatasets: []\n"))),
    Case(
        "profile with a wrong type",
        "rejected",
        "search.rollouts",
        _raises(lambda _: parse_profile({**_TINY, "search": {"rollouts": "many"}})),
    ),
    Case("profile that is not YAML", "rejected", "not valid YAML", _raises(_profile_yaml("name: [unclosed\n"))),
    Case("profile that is a list", "rejected", "top level must be a mapping", _raises(_profile_yaml("- a\n- b\n"))),
    Case("unknown profile name", "rejected", "choose one of", _raises(lambda _: load_profile("no_such_profile"))),
    Case("SQL model with two statements", "rejected", "exactly one SELECT", _raises(_sql("SELECT 1; SELECT 2"))),
    Case("SQL model that drops a table", "rejected", "exactly one SELECT", _raises(_sql("DROP TABLE stg_problems"))),
    Case("pickle-only checkpoint", "rejected", "safetensors required", _raises(_pickle_checkpoint)),
    Case(
        "pair with chosen == rejected",
        "rejected",
        "pair 0 (P1): chosen and rejected are identical",
        _raises(lambda _: validate_pairs([{"problem_id": "P1", "prompt": "p", "chosen": "x", "rejected": "x"}])),
    ),
    Case(
        "pair with an empty rejected",
        "rejected",
        "pair 0 (P2): empty rejected",
        _raises(lambda _: validate_pairs([{"problem_id": "P2", "prompt": "p", "chosen": "x", "rejected": ""}])),
    ),
]


def run_case(case: Case, tmp: Path) -> Outcome:
    """Run one case; any exception that is not one of the project's clear errors is a crash
    and propagates, so the test shows its traceback."""
    tmp.mkdir(parents=True, exist_ok=True)
    return case.run(tmp)
