"""Worker: the `mcts_decode` asset (paper Table 7).

``python -m widen_dag.workers.decode``

For each checkpoint named in ``eval.mcts_decode.variants``, every held-out problem is decoded
by the typed-thought search (the checkpoint as the only policy, the verifier as oracle, up to
N rollouts, stopping at the first correct answer) and, at the same N, sampled N times at the
eval temperature. One row per (checkpoint, problem, method) goes to the lake. Finished trees
are checkpointed per checkpoint and eval set, so a rerun after a crash resumes. Checkpoints are
decoded side by side in processes as evaluation does (``eval.processes``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import polars as pl

from widen_dag.domains.base import Problem
from widen_dag.evaluate import eval_problem_sets, sample_and_score
from widen_dag.evaluate.table7 import DECODE_SCHEMA, decode_diagnostics, markdown_diagnostics, markdown_table7, summarize_decode
from widen_dag.llm import eval_backend_from_profile
from widen_dag.profiles import Profile
from widen_dag.reporting.markdown import json_value, md
from widen_dag.search.decode import decode_config, mcts_decode
from widen_dag.search.mcts import SearchContext
from widen_dag.search.store import TreeStore, config_hash
from widen_dag.storage.artifacts import ModelLocation, ablation_models, local_model, read_manifest
from widen_dag.storage.lake import Lake
from widen_dag.workers.common import Worker, checkpoint_processes, eval_engines_in_this_process, open_worker, side_by_side


def decode_problems(worker: Worker) -> dict[str, list[Problem]]:
    cfg = worker.profile.eval
    return eval_problem_sets(worker.lake.read_table("stg_problems"), cfg.mcts_decode.max_problems or cfg.max_problems)


@dataclass(frozen=True)
class _Variant:
    """One checkpoint's Table 7 decoding, everything a child process needs to run it."""

    variant: str
    published: ModelLocation  # as the lake publishes it (its manifest keys the tree checkpoints)
    model: ModelLocation  # this host's copy
    sets: dict[str, list[Problem]]
    profile: Profile
    lake: Lake


def decode_checkpoint(task: _Variant) -> tuple[str, list[pl.DataFrame], int, list[str], dict[str, dict]]:
    """MCTS decoding and N samples of one checkpoint on every eval set: (variant, row frames,
    trees reused, log lines, diagnostics per eval set). The results do not depend on which
    process runs it."""
    profile, variant, published = task.profile, task.variant, task.published
    ev, gen, dc = profile.eval, profile.generation, profile.eval.mcts_decode
    seed = profile.seed + profile.search.seed
    cfg = decode_config(profile.search, dc.rollouts)
    n_samples = max(dc.test_at)
    frames, logs, reused, diagnostics = [], [], 0, {}
    backend = eval_backend_from_profile(profile, task.model, seed=seed)
    ctx = SearchContext(
        cfg=cfg,
        chat_prompt=backend.chat_prompt,
        count_tokens=backend.count_tokens,
        temperature=ev.temperature,
        top_p=gen.top_p,
        max_tokens_per_node=gen.max_tokens_per_node,
        has_critic=False,
        seed=seed,
    )
    # The published manifest names the trained weights: a retrained checkpoint searches anew,
    # wherever this host's copy of it lives.
    key = config_hash(
        cfg.model_dump(),
        ev.temperature,
        gen.top_p,
        gen.max_tokens_per_node,
        ev.backend,
        seed,
        read_manifest(published.name_or_path) if published.source == "checkpoint" else published.describe(),
    )
    try:
        for eval_set, problems in task.sets.items():
            t0 = time.perf_counter()
            store = TreeStore(task.lake, f"mcts_decode-{variant}-{eval_set}", key)
            rows, n_reused, nodes = mcts_decode(backend, ctx, problems, store)
            reused += n_reused
            t1 = time.perf_counter()
            sampled = sample_and_score(
                backend,
                problems,
                n=n_samples,
                temperature=ev.temperature,
                top_p=gen.top_p,
                max_tokens=ev.max_new_tokens,
                seed=profile.seed,
            )
            t2 = time.perf_counter()
            diagnostics[eval_set] = decode_diagnostics(nodes, sampled)
            by_problem: dict[str, list[bool]] = {}
            for r in sampled:
                by_problem.setdefault(r["problem_id"], []).append(r["correct"])
            base = {"variant": variant, "checkpoint": published.describe(), "eval_set": eval_set, "budget": dc.rollouts}
            recs = [
                {
                    **base,
                    "problem_id": r.problem_id,
                    "method": "mcts",
                    "attempts": r.rollouts,
                    "n_correct": int(r.solved),
                    "first_correct": r.first_correct,
                    "nodes": r.nodes,
                }
                for r in rows
            ]
            for p in problems:
                hits = by_problem[p.problem_id]
                first = next((i + 1 for i, h in enumerate(hits) if h), None)
                recs.append(
                    {
                        **base,
                        "budget": n_samples,
                        "problem_id": p.problem_id,
                        "method": "sampled",
                        "attempts": len(hits),
                        "n_correct": sum(hits),
                        "first_correct": first,
                        "nodes": None,
                    }
                )
            frames.append(pl.DataFrame(recs, schema=DECODE_SCHEMA))
            logs.append(
                f"{variant} on {eval_set}: MCTS decode {t1 - t0:.0f}s ({n_reused} trees reused), "
                f"{n_samples} samples {t2 - t1:.0f}s"
            )
    finally:
        backend.close()
    return variant, frames, reused, logs, diagnostics


def decode_all(worker: Worker) -> dict:
    profile = worker.profile
    dc = profile.eval.mcts_decode
    models = dict(ablation_models(profile, worker.lake))
    sets = decode_problems(worker)
    start = time.perf_counter()
    processes, threads = checkpoint_processes(profile, len(dc.variants))
    eval_engines_in_this_process(profile)
    # From an object-store lake each checkpoint is downloaded to the local cache here, once.
    tasks = [_Variant(v, models[v], local_model(models[v], worker.lake), sets, profile, worker.lake) for v in dc.variants]
    results: dict[str, tuple[list[pl.DataFrame], int, dict[str, dict]]] = {}

    def collect(variant: str, frames: list[pl.DataFrame], reused: int, logs: list[str], diagnostics: dict) -> None:
        for line in logs:
            worker.log(line)
        results[variant] = (frames, reused, diagnostics)
        worker.progress("checkpoints decoded", len(results), len(tasks))

    if processes > 1:
        worker.log(f"decoding {len(tasks)} checkpoints in {processes} processes, {threads} thread(s) each")
    for out in side_by_side(decode_checkpoint, tasks, processes, threads):
        collect(*out)
    table = pl.concat([frame for v in dc.variants for frame in results[v][0]])  # in the profile's order
    reused = sum(results[v][1] for v in dc.variants)
    written = worker.lake.write_table("mcts_decode", table)
    summary = summarize_decode(table, dc.test_at)
    diagnostics = {(v, s): d for v in dc.variants for s, d in results[v][2].items()}
    return {
        "metadata": {
            "path": written.uri,
            "dagster/row_count": table.height,
            "rollouts": dc.rollouts,
            "test_at": ", ".join(map(str, dc.test_at)),
            "reused_trees": reused,
            "decode_seconds": round(time.perf_counter() - start, 1),
            "decode_processes": processes,
            "table7": md(markdown_table7(summary, dc.test_at)),
            # Why MCTS decode and sampling differ: how rollouts ended, what the token limit cut.
            "decode_diagnostics": md(markdown_diagnostics(diagnostics)),
            "decode_diagnostics_json": json_value({f"{v}/{s}": d for (v, s), d in diagnostics.items()}),
        },
        "data_version": written.sha256,
    }


def main() -> None:
    with open_worker() as worker:
        out = decode_all(worker)
        worker.pipes.report_asset_materialization(metadata=out["metadata"], data_version=out["data_version"])


if __name__ == "__main__":
    main()
