"""Preset jobs: `smoke` (seconds: problems + the worker round trip) and `demo` (everything)."""

from __future__ import annotations

import dagster as dg

SMOKE_SELECTION = dg.AssetSelection.groups("problems") | dg.AssetSelection.assets("compute_environment")

smoke_job = dg.define_asset_job(
    "smoke",
    selection=SMOKE_SELECTION,
    description="Problems and the Pipes worker round trip on the active profile: a check that the install works.",
)

VARIANT_ASSETS = dg.AssetSelection.assets("dpo_checkpoint")

demo_job = dg.define_asset_job(
    "demo",
    selection=dg.AssetSelection.all() - VARIANT_ASSETS.downstream(),
    description="Everything up to the SFT and distillation checkpoints on the active profile (tiny by default), "
    "every shard in one run; `widen-dag demo` follows it with one `dpo_variants` run per ablation variant and "
    "one `evaluation` run.",
)

dpo_variants_job = dg.define_asset_job(
    "dpo_variants",
    selection=VARIANT_ASSETS,
    description="The DPO ablation rows, one run per variant partition.",
)

evaluation_job = dg.define_asset_job(
    "evaluation",
    selection=VARIANT_ASSETS.downstream() - VARIANT_ASSETS,
    description="Every checkpoint on the held-out problems, then the ablation table (after all variants).",
)

inbox_search_job = dg.define_asset_job(
    "inbox_search",
    selection=dg.AssetSelection.assets("raw_problems", "stg_problems", "problem_quarantine", "search_trees"),
    description="Load, stage and search one new problem file (requested by the `problem_inbox` sensor, one run "
    "per file partition). The SQL tail picks the new trees up on its cron.",
)

retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets("sft_checkpoint"),
    description="SFT on the current length-balanced set (the `weekly_retrain` schedule requests it only when "
    "the training data changed); `dpo_after_retrain` then runs every DPO variant.",
)

JOBS = [smoke_job, demo_job, dpo_variants_job, evaluation_job, inbox_search_job, retrain_job]


def all_shards_tags(shard_keys: list[str]) -> dict[str, str]:
    """Run tags that make one run cover every profile shard (single-run backfill policy)."""
    return {"dagster/asset_partition_range_start": shard_keys[0], "dagster/asset_partition_range_end": shard_keys[-1]}
