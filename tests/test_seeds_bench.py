"""bench/ablation_seeds.py's per-seed profiles: every seed bootstraps its own tiny models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from widen_dag.profiles import load_profile
from widen_dag.workers.models import _bootstrap_seed

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("ablation_seeds", REPO / "bench" / "ablation_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_seed_bootstraps_its_models_from_its_own_seed_and_seed_0_is_the_demo(tmp_path):
    bench, tiny = _bench(), load_profile("tiny")
    seeds = {}
    for seed in (0, 1, 2):
        lake = tmp_path / f"seed-{seed}"
        lake.mkdir()
        seeded = load_profile(str(bench.seed_profile(seed, lake, "tiny")))
        seeds[seed] = _bootstrap_seed(seeded)
        # Only the bootstrap seed moves: the same problems, split and everything else.
        assert seeded.model_copy(update={"models": tiny.models}) == tiny
    assert seeds[0] == _bootstrap_seed(tiny) == tiny.seed  # seed 0: `make demo`'s models
    assert len(set(seeds.values())) == 3
    # policy +0, student +1, critic +2 never meet another seed's
    assert all(abs(a - b) >= 3 for a in seeds.values() for b in seeds.values() if a != b)


def test_a_profile_with_named_models_is_only_extended(tmp_path):
    bench = _bench()
    path = bench.seed_profile(1, tmp_path, "qwen2_5_1_5b_math")
    assert load_profile(str(path)) == load_profile("qwen2_5_1_5b_math")


def test_finished_seeds_are_summarized_per_seed_and_pooled_into_the_named_readme_block(tmp_path, monkeypatch, capsys):
    import json
    import sys

    import polars as pl

    from widen_dag.evaluate.report import summarize_results
    from widen_dag.storage.lake import Lake

    bench = _bench()
    for seed in (0, 1):
        rows = [
            {"variant": v, "eval_set": "arith", "problem_id": f"p{i}", "sample": k, "correct": (i + k + seed) % ok == 0,
             "no_answer": False, "n_tokens": 5, "reflections": 0, "decoding": "sampled"}
            for v, ok in (("base", 3), ("sft", 2)) for i in range(12) for k in range(2)
        ]  # fmt: skip
        lake = Lake(str(tmp_path / f"seed-{seed}"))
        lake.write_table("eval_results", pl.DataFrame(rows))
        lake.write_table("ablation_report", summarize_results(pl.DataFrame(rows)))
    readme = tmp_path / "README.md"
    readme.write_text(
        "a\n<!-- real:begin -->\nold\n<!-- real:end -->\n<!-- ablation-seeds:begin -->\ntiny\n<!-- ablation-seeds:end -->\n"
    )
    argv = ["ablation_seeds.py", "--seeds", "2", "--lake-root", str(tmp_path), "--readme", str(readme), "--markers", "real"]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()  # both seeds hold a report: nothing runs
    out = json.loads(capsys.readouterr().out)
    assert out["runs"]["0"]["reused"] and out["pooled"]["cells"]["arith/sft"]["samples_per_problem"] == 4
    assert {d["claim"] for d in out["pooled"]["directions"]} == {"SFT on the trees beats the student base"}
    text = readme.read_text()
    assert "old" not in text and "tiny" in text  # only the named block is rewritten
    assert "2 seeds pooled per problem" in text and "| SFT | " in text
