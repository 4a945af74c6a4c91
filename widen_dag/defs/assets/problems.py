"""Problem assets: raw shards as loaded, then the staged, deduplicated, split set."""

import dagster as dg
import polars as pl

from widen_dag.defs.metadata import counts_markdown, table_metadata
from widen_dag.defs.partitions import PROBLEM_SHARDS, problem_shards
from widen_dag.defs.resources import PipelineResource
from widen_dag.domains.problems import (
    INBOX_KEY_PREFIX,
    RAW_SCHEMA,
    ProblemSourceError,
    dataset_roles,
    load_partition,
    stage_problems,
    train_eval_overlap,
    unusable_sources,
)
from widen_dag.profiles import Profile
from widen_dag.reporting.markdown import markdown_preview
from widen_dag.storage.lake import Lake
from widen_dag.storage.owner import LakeOwnedByOtherProfile, claim_lake

NO_OVERLAP_CHECK = "no_train_eval_overlap"


def _claim(context: dg.AssetExecutionContext, lake: Lake, profile: Profile) -> None:
    try:
        previous = claim_lake(lake, profile.name)
    except LakeOwnedByOtherProfile as err:
        raise dg.Failure(str(err), allow_retries=False) from None
    if previous:
        context.log.warning(f"profile {profile.name!r} took over lake {lake.uri()} from {previous!r}")


@dg.asset(
    group_name="problems",
    kinds={"polars", "parquet"},
    code_version="raw_problems-v2",
    partitions_def=problem_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def raw_problems(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Problems of one shard exactly as read from their source (a file, PlanBench, the HF hub,
    the embedded arithmetic generator, or one file dropped into the inbox). Unreadable rows
    are kept with a `load_error` so that staging can quarantine them with a reason; a source
    that cannot be read at all (missing or corrupt file, none of the configured columns) fails
    the step once, naming the file."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    _claim(context, lake, profile)
    frames = []
    for key in context.partition_keys:
        try:
            df = load_partition(profile, key)
        except (ProblemSourceError, ValueError) as err:
            # Reading the same broken file again cannot succeed: no retries, the cause in one line.
            raise dg.Failure(
                f"raw_problems[{key}]: {err}", allow_retries=False, metadata={"partition": key, "cause": str(err)}
            ) from None
        written = lake.write_table("raw_problems", df, key)
        context.log.info(f"{key}: {df.height} rows -> {written.uri}")
        frames.append((df, written))
    df, written = frames[-1]
    both = pl.concat([f for f, _ in frames]) if len(frames) > 1 else df
    return dg.MaterializeResult(
        metadata=table_metadata(both, written, load_errors=int(both["load_error"].is_not_null().sum()), partitions=len(frames)),
        data_version=dg.DataVersion(written.sha256 if len(frames) == 1 else "+".join(w.sha256[:12] for _, w in frames)),
    )


def staged_partitions(profile: Profile, lake: Lake, registered: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(partitions to stage, inbox partitions registered but not loaded yet, raw partitions in
    the lake that the profile does not define). Raises dg.Failure naming any profile shard
    whose raw file is missing: staging what happens to be there would silently shrink the
    train and eval sets."""
    in_lake = set(lake.partitions("raw_problems"))
    shards = profile.shard_keys()
    missing = [k for k in shards if k not in in_lake]
    if missing:
        raise dg.Failure(
            f"stg_problems: raw_problems has no file for {len(missing)} of the profile {profile.name!r}'s "
            f"{len(shards)} shard(s): {', '.join(missing)}; materialize raw_problems for them first",
            allow_retries=False,
            metadata={"missing_partitions": ", ".join(missing)},
        )
    inbox = sorted(k for k in registered if k.startswith(INBOX_KEY_PREFIX))
    waiting = [k for k in inbox if k not in in_lake]  # their own inbox_search run loads and stages them
    keys = shards + [k for k in inbox if k in in_lake]
    ignored = sorted(in_lake - set(keys))
    return keys, waiting, ignored


@dg.multi_asset(
    group_name="problems",
    specs=[
        dg.AssetSpec(
            "stg_problems",
            deps=["raw_problems"],
            kinds={"polars", "parquet"},
            code_version="stg_problems-v2",
            description="Staged problems: stable content-hash problem_id, domain, source, split "
            "(seeded, per problem), question, gold answer in canonical form, meta. Deduplicated by "
            "normalised question; eval copies win. Exactly the profile's shards plus registered inbox files.",
        ),
        dg.AssetSpec(
            "problem_quarantine",
            deps=["raw_problems"],
            kinds={"polars", "parquet"},
            code_version="stg_problems-v2",
            description="Rows that staging refused, each with the reason (missing fields, empty or "
            "over-long text, undecodable bytes, duplicates, conflicting gold answers, gold that does not parse).",
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            NO_OVERLAP_CHECK,
            asset="stg_problems",
            blocking=True,
            description="No problem id and no normalised question is in both train and eval.",
        ),
    ],
)
def stg_problems(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    """Normalise, deduplicate and split exactly the active profile's shards (plus the inbox
    files registered as partitions); quarantine bad rows. A profile shard without its raw file
    fails the step; a source whose every row was refused fails it too."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    _claim(context, lake, profile)
    keys, waiting, ignored = staged_partitions(profile, lake, context.instance.get_dynamic_partitions(PROBLEM_SHARDS))
    versions = {k: lake.table_sha256("raw_problems", k) for k in keys}
    raw = pl.concat([lake.read_table("raw_problems", k) for k in keys], how="vertical_relaxed").cast(RAW_SCHEMA)  # type: ignore[arg-type]
    staged, quarantine = stage_problems(raw, profile.problems, dataset_roles(profile))
    unusable = unusable_sources(raw, quarantine)
    if unusable:
        raise dg.Failure(
            "stg_problems: a source gave no usable row: " + " | ".join(unusable),
            allow_retries=False,
            metadata={"unusable_sources": dg.MetadataValue.md("\n".join(f"- {u}" for u in unusable))},
        )
    if ignored:
        context.log.warning(
            f"raw_problems partitions in the lake that profile {profile.name!r} does not define "
            f"(not staged): {', '.join(ignored)}"
        )
    if waiting:
        context.log.info(
            f"inbox partitions registered but not loaded yet (their inbox_search run stages them): {', '.join(waiting)}"
        )
    w_staged = lake.write_table("stg_problems", staged)
    w_quarantine = lake.write_table("problem_quarantine", quarantine)
    context.log.info(f"{staged.height} staged, {quarantine.height} quarantined from {len(keys)} shard(s)")
    yield dg.MaterializeResult(
        asset_key="stg_problems",
        metadata=table_metadata(
            staged,
            w_staged,
            profile=profile.name,
            shards=len(keys),
            partitions=", ".join(keys),
            partition_data_versions=dg.MetadataValue.json(versions),
            not_staged=", ".join(ignored) or "(none)",
            inbox_waiting=", ".join(waiting) or "(none)",
            by_domain_and_split=counts_markdown(staged, ["domain", "source", "split"]),
        ),
        data_version=dg.DataVersion(w_staged.sha256),
    )
    overlap = train_eval_overlap(staged)
    yield dg.AssetCheckResult(
        asset_key="stg_problems",
        check_name=NO_OVERLAP_CHECK,
        passed=overlap.height == 0,
        metadata={
            "overlapping_rows": overlap.height,
            "sample": dg.MetadataValue.md(
                markdown_preview(overlap.select("problem_id", "shard", "split", "overlap_on", "question"))
            ),
        },
    )
    yield dg.MaterializeResult(
        asset_key="problem_quarantine",
        metadata=table_metadata(quarantine, w_quarantine, by_reason=counts_markdown(quarantine, ["reason"])),
        data_version=dg.DataVersion(w_quarantine.sha256),
    )
