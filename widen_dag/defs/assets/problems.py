"""Problem assets: raw shards as loaded, then the staged, deduplicated, split set."""


import dagster as dg
import polars as pl

from widen_dag.defs.metadata import counts_markdown, table_metadata
from widen_dag.defs.partitions import problem_shards
from widen_dag.defs.resources import PipelineResource
from widen_dag.domains.problems import RAW_SCHEMA, dataset_roles, load_partition, stage_problems


@dg.asset(
    group_name="problems",
    kinds={"polars", "parquet"},
    code_version="raw_problems-v1",
    partitions_def=problem_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def raw_problems(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Problems of one shard exactly as read from their source (a file, PlanBench, the HF hub,
    the embedded arithmetic generator, or one file dropped into the inbox). Unreadable rows
    are kept with a `load_error` so that staging can quarantine them with a reason."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    frames = []
    for key in context.partition_keys:
        df = load_partition(profile, key)
        written = lake.write_table("raw_problems", df, key)
        context.log.info(f"{key}: {df.height} rows -> {written.uri}")
        frames.append((df, written))
    df, written = frames[-1]
    both = pl.concat([f for f, _ in frames]) if len(frames) > 1 else df
    return dg.MaterializeResult(
        metadata=table_metadata(both, written, load_errors=int(both["load_error"].is_not_null().sum()), partitions=len(frames)),
        data_version=dg.DataVersion(written.sha256 if len(frames) == 1 else "+".join(w.sha256[:12] for _, w in frames)),
    )


@dg.multi_asset(
    group_name="problems",
    specs=[
        dg.AssetSpec(
            "stg_problems",
            deps=["raw_problems"],
            kinds={"polars", "parquet"},
            code_version="stg_problems-v1",
            description="Staged problems: stable content-hash problem_id, domain, source, split "
            "(seeded, per problem), question, gold answer in canonical form, meta. Deduplicated.",
        ),
        dg.AssetSpec(
            "problem_quarantine",
            deps=["raw_problems"],
            kinds={"polars", "parquet"},
            code_version="stg_problems-v1",
            description="Rows that staging refused, each with the reason (missing fields, empty or "
            "over-long text, undecodable bytes, duplicate ids with other content, gold that does not parse).",
        ),
    ],
)
def stg_problems(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    """Normalise, deduplicate and split every raw shard written so far; quarantine bad rows."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    keys = lake.partitions("raw_problems")  # every shard loaded so far, inbox files included
    if not keys:
        raise dg.Failure("stg_problems needs raw_problems: materialize at least one shard first")
    raw = pl.concat([lake.read_table("raw_problems", k) for k in keys], how="vertical_relaxed").cast(RAW_SCHEMA)  # type: ignore[arg-type]
    staged, quarantine = stage_problems(raw, profile.problems, dataset_roles(profile))
    w_staged = lake.write_table("stg_problems", staged)
    w_quarantine = lake.write_table("problem_quarantine", quarantine)
    context.log.info(f"{staged.height} staged, {quarantine.height} quarantined from {len(keys)} shard(s)")
    yield dg.MaterializeResult(
        asset_key="stg_problems",
        metadata=table_metadata(
            staged, w_staged, shards=len(keys), by_domain_and_split=counts_markdown(staged, ["domain", "source", "split"])
        ),
        data_version=dg.DataVersion(w_staged.sha256),
    )
    yield dg.MaterializeResult(
        asset_key="problem_quarantine",
        metadata=table_metadata(quarantine, w_quarantine, by_reason=counts_markdown(quarantine, ["reason"])),
        data_version=dg.DataVersion(w_quarantine.sha256),
    )
