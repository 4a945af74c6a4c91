"""Worker: the `search_trees` asset for one or more problem shards.

``python -m widen_dag.workers.search <shard> [<shard> ...]``

Searches the train-split problems of each shard with lock-step MCTS, checkpointing every
finished tree, and publishes the shard's node table. Rerun after a crash, it reuses the
finished trees and searches only the rest.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import polars as pl

from widen_dag.domains.base import Problem
from widen_dag.llm import backend_from_profile
from widen_dag.reporting.markdown import json_value, markdown_table, md
from widen_dag.reporting.plots import markdown_image
from widen_dag.reporting.tree_plot import shard_tree_pictures
from widen_dag.search.format_stats import format_stats, overall_ends
from widen_dag.search.lockstep import LockstepSearch, SearchStats, tree_id_for
from widen_dag.search.mcts import SearchContext
from widen_dag.search.store import TreeStore, config_hash
from widen_dag.search.tree import render_markdown
from widen_dag.storage.artifacts import resolve_model
from widen_dag.workers.common import Worker, check_memory, open_worker

FINGERPRINT_FULL_HASH_BYTES = 256 * 2**20  # hash small models' bytes; big local ones by name, size and mtime


def model_fingerprint(path: str) -> str:
    """What the policy is, as part of the resume key: the hub id, or a local model's content.
    Content, not timestamps, for small models: a model rebuilt identically (or a copied lake)
    keeps every finished tree; a retrained one with other weights reuses none."""
    p = Path(path)
    if not p.is_dir():
        return path
    files = sorted([*p.glob("*.safetensors"), *p.glob("config.json"), *p.glob("tokenizer.json")])
    if sum(f.stat().st_size for f in files) > FINGERPRINT_FULL_HASH_BYTES:
        return json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def shard_problems(worker: Worker, shard: str) -> list[Problem]:
    staged = worker.lake.read_table("stg_problems")
    rows = staged.filter((pl.col("shard") == shard) & (pl.col("split") == "train")).sort("problem_id")
    return [Problem.from_staged(r) for r in rows.iter_rows(named=True)]


def search_shards(worker: Worker, shards: list[str]) -> dict:
    profile = worker.profile
    gen, cfg = profile.generation, profile.search
    seed = profile.seed + cfg.seed
    check_memory(profile, "search")
    policy_model = resolve_model(profile, worker.lake, "policy")
    policy_path = policy_model.name_or_path
    critic_model = resolve_model(profile, worker.lake, "critic") if profile.models.critic is not None else None
    critic_path = critic_model.name_or_path if critic_model else None
    key = config_hash(
        cfg.model_dump(),
        gen.temperature,
        gen.top_p,
        gen.max_tokens_per_node,
        gen.backend,
        seed,
        model_fingerprint(policy_path),
        critic_path and model_fingerprint(critic_path),
    )
    plan = []
    for shard in shards:
        store = TreeStore(worker.lake, shard, key)
        problems = shard_problems(worker, shard)
        done = store.finished()
        plan.append((shard, store, problems, [p for p in problems if tree_id_for(p.problem_id, seed) not in done]))
    backends: dict = {}
    ctx = None
    if any(todo for *_, todo in plan):
        # Engines start only when some tree is left to search: a rerun that reuses every
        # tree costs the reading and publishing, not a model load.
        # Each engine gets its own model's memory share, so policy and critic fit one device together.
        backends["policy"] = backend_from_profile(gen, policy_model, seed=seed, memory=profile.models.policy)
        try:
            if critic_model is not None:
                backends["critic"] = backend_from_profile(gen, critic_model, seed=seed, memory=profile.models.critic)
        except BaseException:
            backends["policy"].close()
            raise
        policy, critic = backends["policy"], backends.get("critic")
        ctx = SearchContext(
            cfg=cfg,
            chat_prompt=policy.chat_prompt,
            count_tokens=policy.count_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_tokens_per_node=gen.max_tokens_per_node,
            has_critic=critic is not None,
            seed=seed,
            critic_chat_prompt=critic.chat_prompt if critic else None,
            critic_count_tokens=critic.count_tokens if critic else None,
        )
    per_shard = []
    all_nodes = []
    totals = SearchStats()
    sample_tree = None
    to_search, searched = sum(len(todo) for *_, todo in plan), 0
    # A previous run's pairs, drawn over their trees in the pictures (none on a first run).
    pairs = worker.lake.read_table("preference_pairs") if worker.lake.has_table("preference_pairs") else None
    pictures = {}
    try:
        for shard, store, problems, todo in plan:
            reused = len(problems) - len(todo)
            worker.log(f"{shard}: {len(problems)} problems, {reused} trees reused from checkpoints, {len(todo)} to search")
            last_log = [time.perf_counter()]

            def progress(stats: SearchStats, shard=shard, total=len(todo), last_log=last_log, before=searched) -> None:
                worker.progress("trees searched", before + stats.trees, to_search)
                if time.perf_counter() - last_log[0] > 10:
                    last_log[0] = time.perf_counter()
                    worker.log(
                        f"{shard}: {stats.trees}/{total} trees, {stats.nodes} nodes, "
                        f"{stats.nodes_per_s:.1f} nodes/s, batch {stats.mean_batch_size:.0f}"
                    )

            stats = LockstepSearch(backends, ctx, on_progress=progress).run(todo, store.save) if todo else SearchStats()
            searched += len(todo)
            nodes, trees = store.load()
            written = store.publish(nodes)
            pictures[f"trees_{shard}"] = md(
                "\n\n".join(
                    f"**{caption}**\n\n{markdown_image(p.png, caption)}"
                    for caption, p in shard_tree_pictures(nodes, trees, pairs)
                )
            )
            all_nodes.append(nodes.select("node_type", "model", "no_answer", "ended_by", "samples"))
            per_shard.append(
                {
                    "shard": shard,
                    "problems": len(problems),
                    "reused": reused,
                    "path": written.uri,
                    "sha256": written.sha256,
                    "trees": trees,
                }
            )
            for name in ("trees", "nodes", "rollouts", "batches", "sequences"):
                setattr(totals, name, getattr(totals, name) + getattr(stats, name))
            totals.seconds += stats.seconds
            if sample_tree is None and trees.height:
                solved = trees.filter(pl.col("correct") > 0).sort("nodes")
                pick = (solved if solved.height else trees).row(solved.height // 2 if solved.height else 0, named=True)
                sample_tree = nodes.filter(pl.col("tree_id") == pick["tree_id"])
        engine = backends["policy"].stats if backends else None
        critic_stats = backends["critic"].stats.as_dict() if "critic" in backends else None
    finally:
        for b in backends.values():
            b.close()
    all_trees = pl.concat([s["trees"] for s in per_shard])
    n_problems = sum(s["problems"] for s in per_shard)
    n_reused = sum(s["reused"] for s in per_shard)
    per_tree = all_trees.sort("tree_id").head(50)
    per_tree_md = markdown_table(
        ["tree", "rollouts", "correct", "outcome", "nodes"],
        [(r["tree_id"][:24], r["rollouts"], r["correct"], r["outcome"], r["nodes"]) for r in per_tree.iter_rows(named=True)],
    )
    node_table = (
        pl.concat(all_nodes)
        if all_nodes
        else pl.DataFrame(
            schema={
                "node_type": pl.String,
                "model": pl.String,
                "no_answer": pl.Boolean,
                "ended_by": pl.String,
                "samples": pl.Int32,
            }
        )
    )
    fmt = format_stats(node_table)
    ends = overall_ends(node_table)
    format_md = markdown_table(
        ["node type", "nodes", "samples", "no-answer", "tag", "stop string", "EOS", "foreign tag", "token limit"],
        [
            (
                r["node_type"],
                r["nodes"],
                r["samples"],
                f"{r['no_answer_rate']:.3f}",
                f"{r['tag']:.3f}",
                f"{r['stop_string']:.3f}",
                f"{r['eos']:.3f}",
                f"{r['foreign_tag']:.3f}",
                f"{r['length']:.3f}",
            )
            for r in fmt
        ],
    )
    metadata = {
        "shards": ", ".join(shards),
        # Does the model follow the node format? Per node type and overall.
        "format_by_node_type": md(format_md),
        "no_answer_rate_by_node_type": json_value({r["node_type"]: r["no_answer_rate"] for r in fmt}),
        **ends,
        "path": per_shard[-1]["path"] if per_shard else "",
        "trees": all_trees.height,
        "dagster/row_count": int(all_trees["nodes"].sum()) if all_trees.height else 0,
        "reused_trees": n_reused,
        "reused_pct": round(100.0 * n_reused / n_problems, 1) if n_problems else 0.0,
        "searched_trees": totals.trees,
        "searched_nodes": totals.nodes,
        "search_seconds": round(totals.seconds, 1),
        "nodes_per_s": round(totals.nodes_per_s, 2),
        "generated_tokens_per_s": round(engine.generated_tokens / totals.seconds, 1) if engine and totals.seconds else 0.0,
        "mean_batch_size": round(totals.mean_batch_size, 1),
        "prefix_cache_hit_rate": round(engine.prefix_cache_hit_rate, 4) if engine else 0.0,
        "solved_trees": int((all_trees["outcome"] == "solved").sum()),
        "outcomes": md(markdown_table(["outcome", "trees"], sorted(all_trees.group_by("outcome").len().rows()))),
        "per_tree": md(per_tree_md),
        "sample_tree": md(render_markdown(sample_tree.to_dicts()) if sample_tree is not None else "(no trees)"),
        # per shard: the first solved and first unsolved tree drawn (reporting.tree_plot)
        **pictures,
        "resume_key": key,
    }
    if critic_stats is not None:
        # The critic's own engine: how many requests it served (double checks, reflections).
        metadata["critic_engine"] = json_value({k: critic_stats[k] for k in ("requests", "generated_tokens", "calls")})
        metadata["critic_nodes"] = int(node_table.filter(pl.col("model") == "critic").height)
    version = "+".join(s["sha256"][:16] for s in per_shard)
    return {"metadata": metadata, "data_version": version}


def main() -> None:
    shards = sys.argv[1:]
    if not shards:
        raise SystemExit("usage: python -m widen_dag.workers.search <shard> [<shard> ...]")
    with open_worker() as worker:
        if worker.profile.generation.backend == "vllm":
            from widen_dag.llm.vllm_backend import engines_in_this_process

            engines_in_this_process(worker.profile.generation.device)  # closed together when the search ends
        out = search_shards(worker, shards)
        worker.pipes.report_asset_materialization(metadata=out["metadata"], data_version=out["data_version"])


if __name__ == "__main__":
    main()
