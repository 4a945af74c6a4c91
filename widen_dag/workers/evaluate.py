"""Worker: the `eval_results` asset.

``python -m widen_dag.workers.evaluate``

Every checkpoint of the ablation (student base, the long-CoT distillation baseline, SFT on
the trees, each DPO variant; real profiles add the untouched base model) answers every
held-out problem ``eval.n_samples()`` times at the eval temperature and once greedily. One
row per response goes to the lake with its decoding, verdict, length and reflection count;
the metadata summarises per checkpoint (intervals: ``ablation_report``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from widen_dag.domains.base import Problem
from widen_dag.evaluate import EVAL_SCHEMA, eval_problem_sets, sample_and_score, summarize
from widen_dag.llm import eval_backend_from_profile, eval_dtype
from widen_dag.profiles import Profile
from widen_dag.reporting.markdown import markdown_table, md
from widen_dag.storage.artifacts import ModelLocation, ablation_models, local_model
from widen_dag.workers.common import (
    Worker,
    check_memory,
    checkpoint_processes,
    eval_engines_in_this_process,
    open_worker,
    side_by_side,
)


def eval_problems(worker: Worker) -> dict[str, list[Problem]]:
    return eval_problem_sets(worker.lake.read_table("stg_problems"), worker.profile.eval.max_problems)


@dataclass(frozen=True)
class _Checkpoint:
    """One checkpoint's evaluation, everything a child process needs to run it."""

    variant: str
    model: ModelLocation
    sets: dict[str, list[Problem]]
    runs: list[tuple[str, int, float]]  # (decoding, samples per problem, temperature)
    profile: Profile


# (eval set, decoding, samples per problem, rows, seconds since the checkpoint's start)
Scored = tuple[str, str, int, list[dict], float]


def evaluate_checkpoint(task: _Checkpoint, on_scored: Callable[[Scored], None] | None = None) -> tuple[str, list[Scored]]:
    """Every eval set and decoding of one checkpoint. The results do not depend on which
    process runs it or what ran before: the backend is built here, seeded from the profile."""
    ev, gen = task.profile.eval, task.profile.generation
    seed = task.profile.seed + ev.seed
    t0, scored = time.perf_counter(), []
    backend = eval_backend_from_profile(task.profile, task.model, seed=seed)
    try:
        for eval_set, problems in task.sets.items():
            for decoding, k, temperature in task.runs:
                rows = sample_and_score(
                    backend, problems, n=k, temperature=temperature, top_p=gen.top_p, max_tokens=ev.max_new_tokens, seed=seed
                )
                scored.append((eval_set, decoding, k, rows, time.perf_counter() - t0))
                if on_scored is not None:
                    on_scored(scored[-1])
    finally:
        backend.close()
    return task.variant, scored


def evaluate_all(worker: Worker) -> dict:
    profile = worker.profile
    ev = profile.eval
    check_memory(profile, "evaluate")
    sets = eval_problems(worker)
    frames, summary_rows = [], []
    start = time.perf_counter()
    seed = profile.seed + ev.seed
    n = ev.n_samples()
    models = [(v, p.describe(), local_model(p, worker.lake)) for v, p in ablation_models(profile, worker.lake)]
    runs = [("sampled", n, ev.temperature)] + ([("greedy", 1, 0.0)] if ev.greedy else [])
    total, done = len(models) * len(runs) * sum(len(p) for p in sets.values()), 0
    processes, threads = checkpoint_processes(profile, len(models) * len(sets))
    eval_engines_in_this_process(profile)
    # transformers: one task (and backend) per checkpoint and eval set, so processes side by side
    # share the work in pieces of ~10-40 s, not whole checkpoints (the distillation baseline's
    # long outputs took as long as two other checkpoints while the other process sat idle), and
    # a set's samples (its backend seeds per call) are the same whatever the process count.
    # vLLM: one engine per checkpoint, built once (it always runs in one process).
    by_set = ev.backend == "transformers"
    split = {name: {name: problems} for name, problems in sets.items()} if by_set else {"all": sets}
    tasks = [_Checkpoint(variant, model, part, runs, profile) for variant, _, model in models for part in split.values()]
    paths = {variant: path for variant, path, _ in models}
    scored_by_variant: dict[str, list[Scored]] = {variant: [] for variant, _, _ in models}
    summary_by_variant: dict[str, list[tuple]] = {variant: [] for variant, _, _ in models}

    def report(variant: str, item: Scored) -> None:
        nonlocal done
        eval_set, decoding, k, rows, seconds = item
        done += len(sets[eval_set])
        worker.progress("evaluated problems", done, total)
        s = summarize(rows)
        mean = statistics.fmean(r["correct"] for r in rows)  # over every sample, not the first alone
        worker.log(
            f"{variant} on {eval_set} ({decoding}, {k}/problem): accuracy {mean:.3f}, "
            f"no-answer {s['no_answer_rate']:.3f}, mean tokens {s['mean_tokens']:.0f}, "
            f"test@{k} {s['test_at_n']:.3f} ({seconds:.0f}s)"
        )
        summary_by_variant[variant].append(
            (
                variant,
                eval_set,
                decoding,
                s["n"],
                f"{mean:.3f}",
                f"{s['no_answer_rate']:.3f}",
                f"{s['mean_tokens']:.0f}",
                f"{s['test_at_n']:.3f}",
            )
        )

    if processes == 1:
        for task in tasks:
            variant, scored = evaluate_checkpoint(task, lambda item, v=task.variant: report(v, item))
            scored_by_variant[variant] += scored
    else:
        worker.log(
            f"evaluating {len(models)} checkpoints x {len(sets)} eval sets in {processes} processes, {threads} thread(s) each"
        )
        for variant, scored in side_by_side(evaluate_checkpoint, tasks, processes, threads):
            for item in scored:
                report(variant, item)
            scored_by_variant[variant] += scored
    set_order = {name: i for i, name in enumerate(sets)}
    for variant, _, _ in models:  # rows in the ablation's and the eval sets' order, however the processes finished
        for eval_set, decoding, _samples, rows, _seconds in sorted(
            scored_by_variant[variant], key=lambda item: set_order[item[0]]
        ):
            frames.append(
                pl.DataFrame(
                    [
                        {**r, "variant": variant, "checkpoint": paths[variant], "eval_set": eval_set, "decoding": decoding}
                        for r in rows
                    ],
                    schema=EVAL_SCHEMA,
                )
            )
        summary_rows += sorted(summary_by_variant[variant], key=lambda row: set_order[row[1]])
    table = pl.concat(frames)
    written = worker.lake.write_table("eval_results", table)
    summary = markdown_table(
        ["variant", "eval set", "decoding", "problems", "accuracy", "no-answer (first)", "mean tokens (first)", "test@n"],
        summary_rows,
    )
    return {
        "metadata": {
            "path": written.uri,
            "dagster/row_count": table.height,
            "backend": ev.backend,
            # what eval.dtype resolved to on this machine (bfloat16_on_amx depends on the CPU)
            "eval_dtype": eval_dtype(profile),
            "samples_per_problem": n,
            "greedy": ev.greedy,
            "eval_seed": seed,
            "test_at_n": ev.test_at_n,
            "eval_seconds": round(time.perf_counter() - start, 1),
            "eval_processes": processes,
            "summary": md(summary),
        },
        "data_version": written.sha256,
    }


def main() -> None:
    with open_worker() as worker:
        out = evaluate_all(worker)
        worker.pipes.report_asset_materialization(metadata=out["metadata"], data_version=out["data_version"])


if __name__ == "__main__":
    main()
