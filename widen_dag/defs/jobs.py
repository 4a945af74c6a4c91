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
    description="Everything up to the SFT checkpoint on the active profile (tiny by default), every shard in one "
    "run; `widen-dag demo` follows it with one `dpo_variants` run per ablation variant.",
)

dpo_variants_job = dg.define_asset_job(
    "dpo_variants",
    selection=VARIANT_ASSETS.downstream(),
    description="The DPO ablation rows and what is computed from them, one run per variant partition.",
)

JOBS = [smoke_job, demo_job, dpo_variants_job]


def all_shards_tags() -> dict[str, str]:
    """Run tags that make one run cover every problem shard (single-run backfill policy)."""
    from widen_dag.defs.partitions import problem_shards

    keys = problem_shards.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
