from __future__ import annotations

import json
import random
import statistics

import polars as pl
import pytest

from widen_dag.evaluate import REFLECTION_RE, summarize
from widen_dag.evaluate.report import TABLE_ROWS, direction_table, markdown_table, summarize_results
from widen_dag.train import distill


def _rows(variant: str, correct: list[bool], no_answer: list[bool], tokens: int, samples: int = 2) -> list[dict]:
    out = []
    for i, (c, na) in enumerate(zip(correct, no_answer, strict=True)):
        for k in range(samples):
            out.append(
                {
                    "variant": variant,
                    "eval_set": "arith",
                    "problem_id": f"p{i}",
                    "sample": k,
                    "correct": c if k == 0 else not c,
                    "no_answer": na and k == 0,
                    "n_tokens": tokens,
                    "reflections": 1,
                }
            )
    return out


def test_summary_accuracy_is_the_mean_over_samples_and_test_at_n_any_sample():
    rows = pl.DataFrame(
        _rows("sft", [True, False, False, False], [False, True, False, False], 40) + _rows("base", [False] * 4, [True] * 4, 90)
    )
    s = {r["variant"]: r for r in summarize_results(rows).iter_rows(named=True)}
    assert s["sft"]["accuracy"] == 0.5  # every problem has one correct sample of two
    assert s["sft"]["no_answer_rate"] == 0.125  # one no-answer among 8 samples
    assert s["sft"]["test_at_n"] == 1.0 and s["sft"]["test_at_2"] == 1.0  # the second sample flips every verdict
    assert s["base"]["no_answer_rate"] == 0.5 and s["base"]["mean_tokens"] == 90
    assert summarize_results(rows)["variant"].to_list() == ["base", "sft"]  # the table's row order


def test_markdown_table_has_the_paper_rows_in_order_with_intervals():
    rows = pl.DataFrame(sum((_rows(v, [True, False], [False, True], 30) for _, v in TABLE_ROWS), []))
    table = markdown_table(summarize_results(rows))
    labels = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("| ") and "row" not in line]
    assert labels == [label for label, _ in TABLE_ROWS]
    assert "| base | 50.0 [50.0, 50.0] | 25.0 [0.0, 50.0] |" in table
    assert "+0.0 [+0.0, +0.0] vs base" in table  # SFT's row: the paired difference to the row it builds on


def test_markdown_table_has_a_greedy_column_only_where_greedy_responses_were_generated():
    sampled = pl.DataFrame(sum((_rows(v, [True, False], [False, True], 30) for v in ("base", "sft")), []))
    greedy = sampled.filter(pl.col("sample") == 0).with_columns(decoding=pl.lit("greedy"), correct=pl.lit(True))
    with_greedy = pl.concat([sampled.with_columns(decoding=pl.lit("sampled")), greedy])
    for rows, has_greedy in ((sampled, False), (with_greedy, True)):
        lines = markdown_table(summarize_results(rows)).splitlines()
        assert lines[0].endswith("+ greedy") is has_greedy
        head = next(line for line in lines if line.startswith("| row "))
        assert ("| greedy % |" in head) is has_greedy
        cells = {line.count("|") for line in lines if line.startswith("|")}
        assert cells == {head.count("|")}, lines  # header, rule and rows alike
    base = next(line for line in lines if line.startswith("| base "))
    assert "| 100.0 |" in base  # greedy right on both problems


def test_a_row_is_compared_with_the_nearest_evaluated_row_above_it_when_a_variant_is_left_out():
    variants = ["base", "sft", "dpo", "joint_masked"]  # no +balance, +cDPO or +joint
    rows = pl.DataFrame(sum((_rows(v, [True, False], [False, True], 30) for v in variants), []))
    summary = {r["variant"]: r for r in summarize_results(rows).iter_rows(named=True)}
    assert summary["joint_masked"]["prev_variant"] == "dpo"
    assert summary["joint_masked"]["acc_diff_vs_prev"] is not None
    table = markdown_table(summary_frame := summarize_results(rows))
    mask_row = next(line for line in table.splitlines() if line.startswith("| +mask "))
    assert mask_row.rstrip(" |").endswith("vs +DPO")
    # The paper's "+mask over +joint" claims are not made against another row.
    claims = [(d["variant"], d["reference"]) for d in direction_table(summary_frame)]
    assert ("joint_masked", "joint") not in claims and ("joint_masked", "dpo") in claims


def test_summarize_counts_no_answer_apart_from_wrong():
    rows = [
        {
            "problem_id": "a",
            "sample": 0,
            "correct": False,
            "no_answer": True,
            "n_tokens": 5,
            "well_formed": False,
            "reflections": 0,
        },
        {
            "problem_id": "b",
            "sample": 0,
            "correct": False,
            "no_answer": False,
            "n_tokens": 7,
            "well_formed": True,
            "reflections": 2,
        },
    ]
    s = summarize(rows)
    assert s["accuracy"] == 0 and s["no_answer_rate"] == 0.5 and s["median_tokens"] == 6


def test_reflection_phrases_are_counted():
    assert len(REFLECTION_RE.findall("Wait, is that right? Alternatively, hmm. Wait! something is wrong")) == 5


def test_overthinking_teacher_pads_correct_solutions_with_habits():
    staged = pl.DataFrame(
        {
            "problem_id": ["p1", "p2"],
            "domain": "arithmetic",
            "split": ["train", "eval"],
            "prompt": ["solve 1", "solve 2"],
            "gold": ["9", "3"],
            "meta": [json.dumps({"steps": ["4 + 5 = 9"]}), json.dumps({"steps": ["1 + 2 = 3"]})],
        }
    )
    rows = distill.synthetic_rows(staged, reflections=6, seed=0)
    assert [r["problem_id"] for r in rows] == ["p1"]  # train split only
    text = rows[0]["messages"][1]["content"]
    assert text.endswith("The answer is \\boxed{9}.") and len(REFLECTION_RE.findall(text)) >= 5
    assert rows == distill.synthetic_rows(staged, reflections=6, seed=0)
    # Every domain has a teacher now (tests/test_real_profiles.py); one without is a clear error.
    with pytest.raises(ValueError, match="no writer for domain 'chess'.*data.distill.source: file"):
        distill.synthetic_rows(staged.with_columns(pl.lit("chess").alias("domain")), 6, 0)


def test_overthinking_solution_is_seeded():
    a = distill.overthinking_solution(["1 + 1 = 2"], "2", random.Random(1), 3)
    assert a == distill.overthinking_solution(["1 + 1 = 2"], "2", random.Random(1), 3)


def test_eval_worker_writes_sampled_and_greedy_responses_for_every_checkpoint(tmp_path, monkeypatch):
    from pathlib import Path
    from types import SimpleNamespace

    from widen_dag.llm.base import Sample
    from widen_dag.profiles import load_profile, with_run_seed
    from widen_dag.storage.artifacts import write_manifest
    from widen_dag.storage.lake import Lake
    from widen_dag.workers import evaluate as worker_mod
    from widen_dag.workers.common import Worker

    lake = Lake(str(tmp_path))
    lake.write_table(
        "stg_problems",
        pl.DataFrame(
            {
                "problem_id": ["p0", "p1", "p2"],
                "split": "eval",
                "source": "arithmetic",
                "domain": "arithmetic",
                "question": ["Ann has 1 pens. How many pens does Ann have?"] * 3,
                "gold": ["1", "2", "3"],
            }
        ),
    )
    profile = with_run_seed(load_profile("tiny"), 5)
    # One process: the stand-in backend below is patched into this process only. Greedy on (tiny
    # leaves it off).
    profile = profile.model_copy(update={"eval": profile.eval.model_copy(update={"processes": 1, "greedy": True})})
    worker = Worker(SimpleNamespace(log=SimpleNamespace(info=lambda m: None)), profile, lake)
    for folder in (
        "models/student_base",
        "checkpoints/distill",
        "checkpoints/sft",
        *(f"checkpoints/dpo-{v}" for v in profile.train.dpo.variants),
    ):
        (Path(tmp_path) / folder).mkdir(parents=True)
        (Path(tmp_path) / folder / "config.json").write_text("{}")
        if folder.startswith("checkpoints/"):
            write_manifest(Path(tmp_path) / folder, {"kind": folder})  # a published checkpoint
    seeds = []

    class FakeBackend:
        def __init__(self, path, seed):
            seeds.append(seed)

        def chat_prompt(self, user):
            return user

        def generate(self, requests):
            # greedy answers 1 (right on p0 only); samples answer 2 (right on p1 only)
            answer = "1" if requests[0].temperature == 0 else "2"
            return [[Sample(f"The answer is \\boxed{{{answer}}}.", 7, -1.0, "stop")] * r.n for r in requests]

        def close(self):
            pass

    monkeypatch.setattr(worker_mod, "eval_backend_from_profile", lambda profile, path, seed: FakeBackend(path, seed))
    out = worker_mod.evaluate_all(worker)
    table = lake.read_table("eval_results")
    n_ckpt = 3 + len(profile.train.dpo.variants)
    n = profile.eval.n_samples()
    assert table.height == n_ckpt * 3 * (n + 1)
    assert table.filter(pl.col("decoding") == "greedy").height == n_ckpt * 3
    assert seeds == [profile.seed + 5] * n_ckpt  # the run seed reaches evaluation sampling
    summary = summarize_results(table)
    row = summary.row(0, named=True)
    assert row["greedy_accuracy"] == pytest.approx(1 / 3) and row["accuracy"] == pytest.approx(1 / 3)
    assert out["metadata"]["samples_per_problem"] == n and out["metadata"]["eval_seed"] == profile.seed + 5


class _Replay:
    """A backend that answers every request with one fixed sample (text, finish reason)."""

    name = model_name = "replay"

    def __init__(self, samples):
        from widen_dag.llm.base import EngineStats

        self.samples, self.stats = samples, EngineStats()

    def chat_prompt(self, user, assistant_prefix=""):
        return user + assistant_prefix

    def generate(self, requests):
        from widen_dag.llm.base import Sample

        return [[Sample(t, 10, 0.0, f)] for (t, f), _ in zip(self.samples, requests, strict=True)]


def test_a_response_cut_off_at_the_token_limit_is_a_no_answer_unless_its_answer_block_closed():
    from widen_dag.domains.base import Problem
    from widen_dag.evaluate import sample_and_score

    looping = "Dee has 7 + 4 = 11 books.\nThe answer is 11.\n" + "Dee has 11 books.\n" * 40
    samples = [
        (looping, "length"),  # states the answer, then loops until the limit: cut off, no answer
        (looping, "stop"),  # the same text ended by the model: answered
        ("<thinking>7 + 4 = 11</thinking><answer>\\boxed{11}</answer><thinking>again", "length"),  # block closed
        ("<thinking>7 + 4 = 11</thinking><answer>The answer is 11, because", "length"),  # block left open
    ]
    problems = [Problem(f"p{i}", "arithmetic", "Dee has 7 books. Dee gets 4 more.", "11") for i in range(len(samples))]
    rows = sample_and_score(_Replay(samples), problems, n=1, temperature=0.0, top_p=1.0, max_tokens=10)
    got = [(r["cut_off"], r["no_answer"], r["correct"]) for r in rows]
    assert got == [(True, True, False), (False, False, True), (True, False, True), (True, True, False)]
    assert summarize(rows)["cut_off_rate"] == 0.75


def test_a_problem_whose_dataset_asks_for_the_fallback_is_read_by_its_last_number_unless_cut_off():
    from widen_dag.domains.base import Problem
    from widen_dag.evaluate import sample_and_score

    prose = "Eve has 7 coins, so Eve has 7 + 9 = 16 coins."
    samples = [(prose, "stop"), (prose, "stop"), (prose, "length")]
    problems = [
        Problem("plain", "arithmetic", "Eve has 7 coins. Eve gets 9 more.", "16"),
        Problem("fallback", "arithmetic", "Eve has 7 coins. Eve gets 9 more.", "16", answer_fallback=True),
        Problem("fallback-cut", "arithmetic", "Eve has 7 coins. Eve gets 9 more.", "16", answer_fallback=True),
    ]
    rows = sample_and_score(_Replay(samples), problems, n=1, temperature=0.0, top_p=1.0, max_tokens=10)
    assert [(r["answer"], r["correct"], r["no_answer"]) for r in rows] == [
        (None, False, True),
        ("16", True, False),
        (None, False, True),
    ]


@pytest.mark.slow
def test_checkpoints_evaluated_in_two_processes_score_as_each_checkpoint_does_alone(tmp_path, tiny_checkpoint):
    """Checkpoints side by side in two spawned processes (one thread each, one task per checkpoint
    and eval set): the table has every checkpoint in the ablation's order, and each one's rows
    are those its evaluation gives run alone in this process, set by set, with the same one thread."""
    from types import SimpleNamespace

    import torch

    from tests.lakes import eval_problems, publish_tiny_checkpoints, tiny_checkpoint_eval_profile
    from widen_dag.storage.artifacts import ablation_models
    from widen_dag.storage.lake import Lake
    from widen_dag.workers import evaluate as worker_mod
    from widen_dag.workers.common import Worker

    lake = Lake(str(tmp_path))
    profile = tiny_checkpoint_eval_profile(
        tiny_checkpoint, max_problems=3, test_at_n=2, processes=2, mcts_decode={"variants": ["sft"]}
    )
    publish_tiny_checkpoints(lake, tiny_checkpoint)
    # two eval sets of 3 problems: two tasks per checkpoint
    staged = eval_problems(6).with_columns(source=pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("a")).otherwise(pl.lit("b")))
    lake.write_table("stg_problems", staged)
    logs: list[str] = []
    worker = Worker(SimpleNamespace(log=SimpleNamespace(info=logs.append)), profile, lake)  # type: ignore[arg-type]

    out = worker_mod.evaluate_all(worker)
    table = lake.read_table("eval_results")
    assert out["metadata"]["eval_processes"] == 2
    assert any("in 2 processes, 1 thread(s) each" in line for line in logs)
    assert list(dict.fromkeys(table["eval_set"])) == ["a", "b"]
    order = [v for v, _ in ablation_models(profile, lake)]
    assert list(dict.fromkeys(table["variant"])) == order == ["base", "distill_baseline", "sft", "dpo"]

    sets = worker_mod.eval_problems(worker)
    runs = [("sampled", 2, profile.eval.temperature), ("greedy", 1, 0.0)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each pooled child ran
    try:
        for variant, published in ablation_models(profile, lake):
            alone = []
            for name, problems in sets.items():
                task = worker_mod._Checkpoint(variant, published, {name: problems}, runs, profile)
                _, scored = worker_mod.evaluate_checkpoint(task)
                alone += [(s, d, r["problem_id"], r["sample"], r["response"]) for s, d, _k, rows, _t in scored for r in rows]
            pooled = table.filter(pl.col("variant") == variant)
            assert alone == list(pooled.select("eval_set", "decoding", "problem_id", "sample", "response").iter_rows())
    finally:
        torch.set_num_threads(threads)


# Runs in a child process: its vLLM engines run in-process and tear down process-wide state,
# which the session's shared engine (conftest.tiny_vllm) must not meet.
_VLLM_EVAL_SCRIPT = """
import json, os, sys
from pathlib import Path
from types import SimpleNamespace
from tests.engines import TINY_ENGINE
from tests.lakes import eval_problems, publish_tiny_checkpoints, tiny_checkpoint_eval_profile
from widen_dag.profiles import parse_profile
from widen_dag.storage.lake import Lake
from widen_dag.workers import evaluate as worker_mod
from widen_dag.workers.common import Worker

checkpoint, root = Path(sys.argv[1]), sys.argv[2]
lake = Lake(root)
data = tiny_checkpoint_eval_profile(
    checkpoint, max_problems=3, test_at_n=2, greedy=False, mcts_decode={"variants": ["sft"]}
).model_dump()
engine = {k: v for k, v in TINY_ENGINE.items() if k != "seed"}
data["generation"].update(backend="vllm", **engine)
data["eval"]["backend"] = "vllm"
profile = parse_profile(data, "t.yaml")
publish_tiny_checkpoints(lake, checkpoint)
lake.write_table("stg_problems", eval_problems(3))
logs = []
out = worker_mod.evaluate_all(Worker(SimpleNamespace(log=SimpleNamespace(info=logs.append)), profile, lake))
table = lake.read_table("eval_results")
print(json.dumps({
    "in_process": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"),
    "processes": out["metadata"]["eval_processes"],
    "variants": list(dict.fromkeys(table["variant"])),
    "rows": {v: int((table["variant"] == v).sum()) for v in dict.fromkeys(table["variant"])},
    "tokens": {v: int(table.filter(table["variant"] == v)["n_tokens"].sum()) for v in dict.fromkeys(table["variant"])},
}))
"""


@pytest.mark.slow
def test_vllm_evaluation_on_cpu_runs_each_checkpoints_engine_in_the_worker_one_after_another(tmp_path, tiny_checkpoint):
    """Evaluation with eval.backend vllm on the CPU: one engine per checkpoint, each opened in the
    worker's own process after the last one closed (no engine process per checkpoint), and every
    checkpoint of the ablation generates and is scored."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    done = subprocess.run(
        [sys.executable, "-c", _VLLM_EVAL_SCRIPT, str(tiny_checkpoint), str(tmp_path / "lake")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["in_process"] == "0"
    assert got["processes"] == 1
    assert got["variants"] == ["base", "distill_baseline", "sft", "dpo"]
    assert all(n == 3 * 2 for n in got["rows"].values()), got["rows"]  # 3 problems x 2 samples each
    assert all(t > 0 for t in got["tokens"].values()), got["tokens"]


def test_seed_summary_has_a_greedy_column_only_where_the_seeds_decoded_greedily():
    from widen_dag.evaluate.report import seed_markdown

    def summary(with_greedy: bool) -> dict:
        cell = {k: {"mean": 0.5, "sd": 0.1} for k in ("accuracy", "no_answer_rate", "test_at_n")}
        if with_greedy:
            cell["greedy_accuracy"] = {"mean": 0.25, "sd": 0.0}
        return {"seeds": [0, 1], "cells": {"arith": {"SFT": cell}}, "directions": []}

    for with_greedy in (False, True):
        lines = seed_markdown(summary(with_greedy)).splitlines()
        head = next(line for line in lines if line.startswith("| row "))
        assert ("greedy" in head) is with_greedy
        rows = [line for line in lines if line.startswith("| SFT ")]
        assert rows and {r.count("|") for r in rows} == {head.count("|")}
        assert ("25.0 ± 0.0" in rows[0]) is with_greedy


def test_pooling_seeds_scores_each_problem_over_every_seeds_samples_and_narrows_the_paired_interval():
    """Three seeds answer the same 40 problems: the pooled cell is the mean over seeds, each
    problem's score is its share over all 3 x 2 samples, greedy responses are left out, and the
    paired SFT - base interval on the pooled scores is narrower than one seed's."""
    from widen_dag.evaluate.report import pooled_markdown, pooled_summary, summarize_results

    rng = random.Random(3)
    results = {}
    for seed in range(3):
        rows = []
        for variant, p_correct in (("base", 0.3), ("sft", 0.5)):
            for i in range(40):
                for k in range(2):
                    ok = rng.random() < p_correct
                    rows.append(
                        {"variant": variant, "eval_set": "arith", "problem_id": f"p{i}", "sample": k, "correct": ok,
                         "no_answer": not ok and rng.random() < 0.5, "n_tokens": 10, "reflections": 0, "decoding": "sampled"}
                    )  # fmt: skip
                rows.append({**rows[-1], "sample": 0, "decoding": "greedy", "correct": True, "no_answer": False})
        results[seed] = pl.DataFrame(rows)
    per_seed = {s: summarize_results(r) for s, r in results.items()}
    pooled = pooled_summary(results)
    sft = pooled.filter(pl.col("variant") == "sft").row(0, named=True)
    assert sft["n"] == 40 and sft["samples_per_problem"] == 6
    assert sft["accuracy"] == pytest.approx(statistics.fmean(
        s.filter(pl.col("variant") == "sft")["accuracy"][0] for s in per_seed.values()))  # fmt: skip
    assert "greedy_accuracy" not in pooled.columns
    width = sft["acc_diff_vs_prev_hi"] - sft["acc_diff_vs_prev_lo"]
    seed_widths = [
        s.filter(pl.col("variant") == "sft")["acc_diff_vs_prev_hi"][0]
        - s.filter(pl.col("variant") == "sft")["acc_diff_vs_prev_lo"][0]
        for s in per_seed.values()
    ]
    assert width < min(seed_widths)
    text = pooled_markdown(pooled, 3)
    assert "| SFT | " in text and "arith (40)" in text and "SFT - base accuracy" in text
    # a cell one seed lacks is left out, so every paired difference compares the same seeds
    results[1] = results[1].filter(pl.col("variant") == "base")
    assert set(pooled_summary(results)["variant"]) == {"base"}
