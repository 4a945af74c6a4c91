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

JOBS = [smoke_job, demo_job, dpo_variants_job, evaluation_job]


def all_shards_tags() -> dict[str, str]:
    """Run tags that make one run cover every problem shard (single-run backfill policy)."""
    from widen_dag.defs.partitions import problem_shards

    keys = problem_shards.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
