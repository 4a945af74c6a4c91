"""The whole ablation over K seeds on one profile: mean +- sd per cell and how often each of
the paper's directions held. Not in CI (each seed is a full demo, ~10+ minutes here).

    .venv/bin/python bench/ablation_seeds.py --seeds 3 [--profile tiny] [--lake-root lake_seeds] [--readme README.md]

Seed s runs `widen-dag demo --seed s` on a profile of its own, written into its lake folder
<lake-root>/seed-<s> (profile.yaml: `extends` the bench's profile and sets
models.bootstrap.seed = profile seed + 100 s). Every run (demo, dpo_variants per variant,
evaluation) carries s as the pipeline resource's run config (search, training, distillation
data and evaluation sampling seeds) and the tag widen_dag/seed, so the runs sit side by side in
the UI of one $DAGSTER_HOME; the problems and their split stay, so every seed answers the same
held-out problems (the paired comparisons need that). The tiny policy and student are
bootstrapped again in every seed from their own seed, so the spread covers the whole pipeline;
seed 0 is exactly `make demo` (same seeds everywhere). --same-base-models trains them once in
the first seed and copies them into the others; --base-models-from LAKE copies an existing
lake's (e.g. ./lake after `make demo`): both then measure everything but the bootstrap. A seed
whose lake already holds an ablation_report is reused (--rerun to run it again), so an
interrupted bench resumes. Prints JSON: per-seed figures (keyed eval_set/variant),
per cell mean and sd, per direction the share of seeds in which it held (point estimate)
and in which it was supported (paired 95% interval excluding zero), and the seeds pooled
(``report.pooled_summary``: every seed's responses to a problem scored together, each cell and
paired difference with its interval over problems on K times the samples); with --readme, also
writes that summary as Markdown between the <!-- NAME:begin --> / <!-- NAME:end --> markers of
the file (--markers NAME, default ablation-seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from widen_dag.evaluate import report
from widen_dag.profiles import load_profile, profile_ref
from widen_dag.storage.lake import Lake

POOLED_CELL = (
    "n",
    "samples_per_problem",
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "no_answer_rate",
    "no_answer_lo",
    "no_answer_hi",
)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


PER_SEED = ("accuracy", "accuracy_lo", "accuracy_hi", "no_answer_rate", "greedy_accuracy", "test_at_n", "mean_tokens")


SEED_STRIDE = 100  # bootstrap seeds of run seed s start at profile seed + 100 s (policy +0, student +1, critic +2)


def seed_profile(seed: int, lake: Path, profile: str | None) -> Path:
    """The seed's profile file: the bench's profile with the bootstrap seeded from ``seed``
    (a profile with named models has nothing to re-bootstrap and is only extended)."""
    parent = profile_ref(profile)
    resolved = load_profile(parent)
    data: dict = {"extends": parent}
    if resolved.models.policy.source == "bootstrap":
        data["models"] = {"bootstrap": {"seed": resolved.seed + SEED_STRIDE * seed}}
    path = lake / "profile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_seed(seed: int, lake: Path, profile: str | None, models_from: Path | None) -> dict:
    lake.mkdir(parents=True, exist_ok=True)
    seeded = seed_profile(seed, lake, profile)
    cmd = [sys.executable, "-m", "widen_dag.cli", "demo", "--seed", str(seed), "--profile", str(seeded)]
    if models_from is not None:
        # The same base models in every seed: trained once, copied here.
        shutil.copytree(models_from / "models", lake / "models", dirs_exist_ok=True)
        cmd.append("--reuse-base-models")
    env = {**os.environ, "WIDEN_DAG_LAKE": str(lake)}
    start = time.perf_counter()
    with open(lake / "demo.log", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise SystemExit(f"seed {seed}: widen-dag demo failed (exit {rc}); see {lake / 'demo.log'}")
    return {"seconds": round(time.perf_counter() - start, 1), "profile": str(seeded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="3", help="K (seeds 0..K-1) or a comma list, e.g. 0,1,2")
    parser.add_argument("--profile", help="profile name or YAML path (default: $WIDEN_DAG_PROFILE or tiny)")
    parser.add_argument("--lake-root", default="lake_seeds", help="one lake folder per seed below this")
    parser.add_argument("--rerun", action="store_true", help="run seeds again even if their report exists")
    parser.add_argument(
        "--same-base-models",
        action="store_true",
        help="bootstrap the tiny policy and student once, in the first seed, and copy them into the others "
        "(default: every seed bootstraps its own)",
    )
    parser.add_argument(
        "--base-models-from",
        type=Path,
        help="a lake whose models/ (the bootstrapped base models, e.g. ./lake after `make demo`) every seed copies",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the summary as Markdown (stderr)")
    parser.add_argument("--readme", type=Path, help="rewrite the summary between the --markers of this file")
    parser.add_argument(
        "--markers", default="ablation-seeds", help="NAME of the <!-- NAME:begin --> ... <!-- NAME:end --> pair --readme rewrites"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if "," in args.seeds else list(range(int(args.seeds)))
    if len(seeds) < 2:
        raise SystemExit("--seeds: need at least 2 seeds for a spread")
    root = Path(args.lake_root).resolve()
    base_models = args.base_models_from.resolve() if args.base_models_from else None
    if base_models is not None and not (base_models / "models").is_dir():
        raise SystemExit(f"--base-models-from: {base_models} has no models/ folder")
    runs, reports, results = {}, {}, {}
    for seed in seeds:
        lake_dir = root / f"seed-{seed}"
        lake = Lake(str(lake_dir))
        first = root / f"seed-{seeds[0]}"
        models_from = base_models or (
            first if args.same_base_models and seed != seeds[0] and (first / "models").is_dir() else None
        )
        if args.rerun or not lake.has_table("ablation_report"):
            runs[seed] = run_seed(seed, lake_dir, args.profile, models_from)
            runs[seed]["base_models_from"] = str(models_from or lake_dir)
            print(f"seed {seed}: {runs[seed]['seconds']:.0f}s", file=sys.stderr, flush=True)
        else:
            runs[seed] = {"seconds": None, "reused": str(lake_dir)}
        reports[seed] = lake.read_table("ablation_report")
        results[seed] = lake.read_table("eval_results")
    summary = report.seed_summary(reports)
    pooled = report.pooled_summary(results)
    per_seed = {
        seed: {f"{r['eval_set']}/{r['variant']}": {k: r.get(k) for k in PER_SEED} for r in reports[seed].iter_rows(named=True)}
        for seed in seeds
    }
    out = {
        "profile": args.profile or os.environ.get("WIDEN_DAG_PROFILE") or "tiny",
        "lake_root": str(root),
        "base_models": "copied from " + str(base_models)
        if base_models
        else (
            "bootstrapped once, in the first seed" if args.same_base_models else "bootstrapped in every seed from its own seed"
        ),
        "runs": runs,
        **summary,
        # every seed's responses to a problem pooled: intervals over problems on K x the samples
        "pooled": {
            "cells": {
                f"{r['eval_set']}/{r['variant']}": {k: r.get(k) for k in POOLED_CELL} for r in pooled.iter_rows(named=True)
            },
            "directions": report.direction_table(pooled),
        },
        "per_seed": per_seed,
    }
    print(json.dumps(out, indent=1))
    markdown = report.seed_markdown(summary) + "\n" + report.pooled_markdown(pooled, len(seeds))
    if args.markdown:
        print(markdown, file=sys.stderr)
    if args.readme:
        begin, end = markers(args.markers)
        text = args.readme.read_text()
        if begin not in text or end not in text:
            raise SystemExit(f"{args.readme}: no {begin} ... {end} markers")
        block = f"{begin}\n<!-- written by bench/ablation_seeds.py; do not edit by hand -->\n{markdown}{end}"
        args.readme.write_text(re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL))


if __name__ == "__main__":
    main()
