"""Data products from the trees: token lengths (Python) and the dbt-like SQL models over DuckDB."""

import dagster as dg
import polars as pl

from widen_dag.datasets import lengths
from widen_dag.datasets import sql as sqlmodels
from widen_dag.defs.metadata import markdown_preview, table_metadata
from widen_dag.defs.resources import PipelineResource
from widen_dag.reporting.plots import length_distribution_png, markdown_image
from widen_dag.storage.artifacts import resolve_model

MODELS = sqlmodels.load_models()
CHECKS = sqlmodels.load_checks(MODELS)
# The cheap tail (tokenizing and SQL, seconds to minutes on a CPU) refreshes at most once per
# cron tick, when any input (new trees, a new student tokenizer) changed since its last request.
# Unlike on_cron it needs *any* dependency updated, not all (new trees alone must count), and
# it remembers updates that land between ticks. The GPU stages never run eagerly.
SQL_TAIL_CRON = "0 * * * *"
_AC = dg.AutomationCondition
_TICK = _AC.cron_tick_passed(SQL_TAIL_CRON)
# Reset by the tail's own request, unless new input landed in that same evaluation (a reset
# would otherwise win and forget it).
_INPUTS_CHANGED = _AC.any_deps_updated().since((_AC.newly_requested() & ~_AC.any_deps_updated()) | _AC.initial_evaluation())
SQL_TAIL_CONDITION = (_TICK.since_last_handled() & _INPUTS_CHANGED & ~_AC.any_deps_in_progress()).with_label(
    f"hourly ({SQL_TAIL_CRON}) once any input changed"
)


@dg.asset(
    group_name="datasets",
    kinds={"polars", "parquet"},
    code_version="node_lengths-v1",
    deps=["search_trees", "student_base"],
    automation_condition=SQL_TAIL_CONDITION,
)
def node_lengths(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Length of every tree node in the student's tokenizer (fast tokenizer, batched), joined
    by the SQL models: Thoughts Length Balance is measured in the tokens the student trains on."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    student = resolve_model(profile, lake, "student")
    source = student.describe()
    tokenizer = lengths.load_student_tokenizer(student.name_or_path, student.revision)
    nodes = lake.read_all("search_trees")
    df = lengths.node_lengths(nodes, tokenizer)
    written = lake.write_table("node_lengths", df)
    context.log.info(f"{df.height} nodes tokenized with {source}")
    return dg.MaterializeResult(
        metadata=table_metadata(df, written, tokenizer=source, mean_tokens=float(df["student_tokens"].mean() or 0)),
        data_version=dg.DataVersion(written.sha256),
    )


def _extra_metadata(name: str, lf: pl.LazyFrame, rows: int) -> dict:
    # lazy: a batched result is scanned from its file for the few columns needed, never loaded whole
    if name == "length_profile" and rows:
        df = lf.select("domain", "shortest_tokens", "median_tokens", "longest_tokens").collect()
        groups = {
            d: {
                "shortest": g["shortest_tokens"].to_list(),
                "median": g["median_tokens"].to_list(),
                "longest": g["longest_tokens"].to_list(),
            }
            for (d,), g in df.group_by("domain", maintain_order=True)
        }
        png = length_distribution_png(groups, "correct path lengths")
        return {
            "length_plot": dg.MetadataValue.md(markdown_image(png, "length profile")),
            "mean_shortest": float(df["shortest_tokens"].mean()),
            "mean_longest": float(df["longest_tokens"].mean()),
        }
    if name == "preference_pairs" and rows:
        df = lf.select("pairing", "common_prefix_tokens").collect()
        return {
            "pairs_by_pairing": dg.MetadataValue.json(dict(df.group_by("pairing").len().rows())),
            "mean_common_prefix_tokens": float(df["common_prefix_tokens"].mean()),
        }
    if name == "tree_paths" and rows:
        sums = lf.select(pl.col("correct").sum(), pl.col("no_answer").sum()).collect()
        return {"correct_paths": int(sums["correct"][0]), "no_answer_paths": int(sums["no_answer"][0])}
    return {}


@dg.multi_asset(
    name="dbt_like_sql",
    specs=[
        dg.AssetSpec(
            m.name,
            deps=list(m.deps),
            description=m.description,
            group_name="datasets",
            kinds={"duckdb", "sql", "parquet"},
            code_version=m.code_version,
            skippable=True,
            automation_condition=SQL_TAIL_CONDITION,
        )
        for m in MODELS.values()
    ],
    check_specs=[dg.AssetCheckSpec(c.name, asset=c.model, description=c.description, blocking=c.blocking) for c in CHECKS],
    can_subset=True,
)
def dbt_like_sql(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    """Runs the selected SQL models of dbt_like_sql/ in dependency order over one DuckDB
    connection, writes each to the lake, then runs the checks on it. Past the profile's
    data.duckdb.batch_rows input rows the models run per range of problems under its memory
    limit (spilling beyond it) and stream to the lake; each batch is logged."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    selected = [k.path[-1] for k in context.selected_asset_keys]
    params = {"sft_selection": profile.data.sft_selection}
    settings = sqlmodels.DuckDBSettings(**profile.data.duckdb.model_dump())
    con = lake.connect()
    selected_checks = {k.name for k in context.selected_asset_check_keys}

    def progress(b: sqlmodels.BatchProgress) -> None:
        made = ", ".join(f"{n} {r}" for n, r in b.output_rows.items())
        context.log.info(
            f"batch {b.index}/{b.total} (problems {b.first_key} .. {b.last_key}, {b.input_rows} input rows) "
            f"in {b.seconds:.1f} s: {made}; DuckDB holds {b.duckdb_memory_bytes >> 20} MiB, "
            f"spilled {b.duckdb_temp_bytes >> 20} MiB"
        )

    for run in sqlmodels.run_models(lake, MODELS, selected, params, con, settings, progress):
        name, written, seconds, rows = run.name, run.written, run.seconds, run.written.rows
        context.log.info(f"{name}: {rows} rows in {seconds:.2f} s ({run.batches} batches) -> {written.uri}")
        timing = {"query_seconds": round(seconds, 3), "rows_per_s": round(rows / max(seconds, 1e-6)), "batches": run.batches}
        head = run.df if run.df is not None else run.lazy().head(5).collect()
        yield dg.MaterializeResult(
            asset_key=name,
            metadata={
                **table_metadata(head, written),
                "dagster/row_count": rows,
                **timing,
                **_extra_metadata(name, run.lazy(), rows),
            },
            data_version=dg.DataVersion(written.sha256),
        )
        for check in CHECKS:
            if check.model != name or check.name not in selected_checks:
                continue
            failing = sqlmodels.run_check(con, check, params)
            yield dg.AssetCheckResult(
                asset_key=name,
                check_name=check.name,
                passed=failing.height == 0,
                severity=dg.AssetCheckSeverity.ERROR if check.blocking else dg.AssetCheckSeverity.WARN,
                metadata={"failing_rows": failing.height, "sample": dg.MetadataValue.md(markdown_preview(failing))},
            )
