"""Faults injected and bad inputs tried, measured: the README's reliability table.

    .venv/bin/python bench/reliability.py [--readme README.md]

Runs the fault injections of tests/reliability/faults.py (kill -9 of the search at 5 random
points, of the SQL layer mid-write, of a checkpoint mid-save, of training mid-run) and the
whole bad-input corpus (tests/reliability/bad_inputs.py), prints JSON, and with --readme
rewrites the table between the README's reliability markers. Nothing in the table is typed
by hand.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the fault routines and the corpus live under tests/

BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def run_faults(tmp: Path) -> dict:
    from tests.reliability import faults

    out = {}
    for name, fn in (
        ("search_kill9", faults.search_kill9),
        ("sql_kill9_mid_write", faults.sql_kill9_mid_write),
        ("checkpoint_kill9_mid_save", faults.checkpoint_kill9_mid_save),
        ("training_kill9_and_resume", faults.training_kill9_and_resume),
    ):
        start = time.perf_counter()
        out[name] = {**fn(tmp / name), "seconds": round(time.perf_counter() - start, 1)}
    return out


def run_corpus(tmp: Path) -> dict:
    from tests.reliability.bad_inputs import CASES, run_case

    kinds: collections.Counter[str] = collections.Counter()
    crashes, mismatched, slowest = [], [], 0.0
    for i, case in enumerate(CASES):
        try:
            outcome = run_case(case, tmp / f"case{i}")
        except Exception as err:  # a crash: exactly what the corpus must never see
            crashes.append(f"{case.name}: {type(err).__name__}: {err}"[:300])
            continue
        kinds[outcome.kind] += 1
        slowest = max(slowest, outcome.seconds)
        if outcome.kind != case.expect or case.contains not in outcome.message:
            mismatched.append(case.name)
    return {
        "cases": len(CASES),
        "by_outcome": dict(kinds),
        "crashes": crashes,
        "unexpected_outcomes": mismatched,
        "slowest_verifier_call_s": round(slowest, 2),
    }


def markdown(result: dict) -> str:
    f, c = result["faults"], result["bad_inputs"]
    s, q, k, t = f["search_kill9"], f["sql_kill9_mid_write"], f["checkpoint_kill9_mid_save"], f["training_kill9_and_resume"]
    ok = lambda b: "yes" if b else "**no**"  # noqa: E731
    rows = [
        (
            "search: kill -9 at random points, rerun each time",
            f"{s['kills']} kills",
            f"trees identical to an uninterrupted run: {ok(s['trees_identical_to_uninterrupted'])}; duplicate node ids: "
            f"{s['duplicate_node_ids']}; finished trees reused: {s['tree_reuse_pct']}% of {s['trees']} "
            f"(after each kill: {', '.join(map(str, s['finished_trees_after_each_kill']))})",
        ),
        (
            "SQL model: kill -9 between writing and publishing",
            "1 kill",
            f"partial table visible: {'**yes**' if q['partial_table_visible'] else 'no'}; upstream models published: "
            f"{ok(q['upstream_models_published'])}",
        ),
        ("checkpoint: kill -9 mid-save", "1 kill", f"checkpoint visible: {'**yes**' if k['checkpoint_visible'] else 'no'}"),
        (
            "training: kill -9 at step 5 of 8 (Trainer checkpoints every 2)",
            "1 kill",
            f"resumed from step {t['resumed_from_step']}; weights equal to an uninterrupted run: {ok(t['weights_equal_uninterrupted'])}",
        ),
        (
            "bad inputs (tests/reliability/bad_inputs.py)",
            f"{c['cases']} cases",
            ", ".join(f"{n} {kind}" for kind, n in sorted(c["by_outcome"].items())) + f"; crashes: {len(c['crashes'])}; "
            f"slowest verifier call {c['slowest_verifier_call_s']} s",
        ),
    ]
    lines = ["| fault or input | tried | what survived |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, help="rewrite the table between the reliability markers of this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"faults": run_faults(Path(tmp) / "faults"), "bad_inputs": run_corpus(Path(tmp) / "corpus")}
    result["markdown"] = markdown(result)
    print(json.dumps(result, indent=2, default=str))
    if args.readme:
        text = args.readme.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{args.readme}: no {BEGIN} ... {END} markers")
        block = f"{BEGIN}\n<!-- written by bench/reliability.py; do not edit by hand -->\n{result['markdown']}\n{END}"
        args.readme.write_text(re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL))


if __name__ == "__main__":
    main()
