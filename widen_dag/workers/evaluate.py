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

import polars as pl

from widen_dag.domains.base import Problem
from widen_dag.evaluate import EVAL_SCHEMA, eval_problem_sets, sample_and_score, summarize
from widen_dag.llm import backend_from_profile
from widen_dag.reporting.markdown import markdown_table, md
from widen_dag.storage.artifacts import ablation_models, local_model
from widen_dag.workers.common import Worker, check_memory, open_worker


def eval_problems(worker: Worker) -> dict[str, list[Problem]]:
    return eval_problem_sets(worker.lake.read_table("stg_problems"), worker.profile.eval.max_problems)


def evaluate_all(worker: Worker) -> dict:
    profile = worker.profile
    ev, gen = profile.eval, profile.generation
    check_memory(profile, "evaluate")
    sets = eval_problems(worker)
    frames, summary_rows = [], []
    start = time.perf_counter()
    seed = profile.seed + ev.seed
    n = ev.n_samples()
    models = ablation_models(profile, worker.lake)
    runs = [("sampled", n, ev.temperature)] + ([("greedy", 1, 0.0)] if ev.greedy else [])
    total, done = len(models) * len(runs) * sum(len(p) for p in sets.values()), 0
    for variant, published in models:
        path = published.describe()
        model = local_model(published, worker.lake)  # from an object-store lake: downloaded to the local cache
        t0 = time.perf_counter()
        backend = backend_from_profile(gen, model, seed=seed, backend=ev.backend, max_batch=ev.batch_size)
        try:
            for eval_set, problems in sets.items():
                for decoding, k, temperature in runs:
                    rows = sample_and_score(
                        backend, problems, n=k, temperature=temperature, top_p=gen.top_p, max_tokens=ev.max_new_tokens, seed=seed
                    )
                    frames.append(
                        pl.DataFrame(
                            [
                                {**r, "variant": variant, "checkpoint": path, "eval_set": eval_set, "decoding": decoding}
                                for r in rows
                            ],
                            schema=EVAL_SCHEMA,
                        )
                    )
                    done += len(problems)
                    worker.progress("evaluated problems", done, total)
                    s = summarize(rows)
                    mean = statistics.fmean(r["correct"] for r in rows)  # over every sample, not the first alone
                    worker.log(
                        f"{variant} on {eval_set} ({decoding}, {k}/problem): accuracy {mean:.3f}, "
                        f"no-answer {s['no_answer_rate']:.3f}, mean tokens {s['mean_tokens']:.0f}, "
                        f"test@{k} {s['test_at_n']:.3f} ({time.perf_counter() - t0:.0f}s)"
                    )
                    summary_rows.append(
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
        finally:
            backend.close()
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
            "samples_per_problem": n,
            "greedy": ev.greedy,
            "eval_seed": seed,
            "test_at_n": ev.test_at_n,
            "eval_seconds": round(time.perf_counter() - start, 1),
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
