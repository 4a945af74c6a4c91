"""Evaluation: every checkpoint on the held-out problems, and the paper's ablation table."""

import json

import dagster as dg
import polars as pl

from widen_dag.defs.assets.training import student_version, train_checkpoint
from widen_dag.defs.metadata import table_metadata, with_column_schema
from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import GPU_POOL, SHARED_CORES_POOL, run_or_reuse
from widen_dag.domains import get_domain
from widen_dag.evaluate import EVAL_SCHEMA, report
from widen_dag.evaluate import table7 as table7_md
from widen_dag.reporting.plots import markdown_image
from widen_dag.storage.reuse import recorded_version
from widen_dag.train import distill


@dg.asset(group_name="datasets", kinds={"polars", "parquet"}, code_version="distill_dataset-v1", deps=["stg_problems"])
def distill_dataset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Long chain-of-thought SFT data for the distillation-bottleneck row. Tiny profile: a
    synthetic over-thinking teacher (correct solutions padded with "Wait, ..." and
    "Alternatively, ..." and repeated steps); real profiles: the long-CoT file they name."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    cfg = profile.data.distill
    extra = {}
    if cfg.source == "synthetic":
        staged = lake.read_table("stg_problems")
        try:
            rows = distill.synthetic_rows(staged, cfg.reflections, cfg.seed)
        except ValueError as err:
            raise dg.Failure(str(err)) from None
        # Left out on purpose (evaluated out of domain, as in the paper); said, not silent.
        extra["not_distilled"] = distill.not_distilled(staged)
    else:
        try:
            rows = distill.file_rows(cfg.path, cfg.question_field, cfg.response_field, get_domain(cfg.domain).task_prompt)
        except (ValueError, OSError) as err:
            raise dg.Failure(str(err)) from None
    df = pl.DataFrame(rows)
    written = lake.write_table("distill_dataset", df)
    chars = df["messages"].list.get(1).struct.field("content").str.len_chars()
    return dg.MaterializeResult(
        metadata=table_metadata(df, written, source=cfg.source, mean_response_chars=float(chars.mean()), **extra),
        data_version=dg.DataVersion(written.sha256),
    )


@dg.asset(
    group_name="training",
    kinds={"pytorch", "safetensors"},
    code_version="distill_checkpoint-v2",
    **SHARED_CORES_POOL,
    deps=["distill_dataset", "student_base"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
)
def distill_checkpoint(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """The student SFT'd on distilled long CoT instead of on the trees (same SFT config): the
    bottleneck the paper starts from, one more row of the ablation table."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    return train_checkpoint(
        context,
        pipeline,
        pipes_subprocess_client,
        "distill",
        {"distill_dataset": lake.table_sha256("distill_dataset"), "student_base": student_version(pipeline)},
        {"sft": profile.train.sft.model_dump(), "seed": profile.train.seed},
        "distill",
    )


def ablation_checkpoint_versions(pipeline: PipelineResource) -> dict[str, tuple[str, str | None]]:
    """Each ablation row's checkpoint as a stage input: variant -> (input name, recorded data
    version). Evaluation and MCTS decoding are rerun only when a checkpoint they read changed."""
    profile, lake = pipeline.load_profile(), pipeline.lake()
    return {
        "base": ("student_base", student_version(pipeline)),
        "distill_baseline": ("distill_checkpoint", recorded_version(lake, "distill_checkpoint")),
        "sft": ("sft_checkpoint", recorded_version(lake, "sft_checkpoint")),
        **{v: (f"dpo_checkpoint[{v}]", recorded_version(lake, "dpo_checkpoint", v)) for v in profile.train.dpo.variants},
    }


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "parquet"},
    code_version="eval_results-v6",
    **GPU_POOL,
    deps=["student_base", "distill_checkpoint", "sft_checkpoint", "dpo_checkpoint", "stg_problems"],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
)
def eval_results(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """Every checkpoint (base, distillation baseline, SFT, each DPO variant) on every eval set:
    one row per response with decoding (sampled / greedy), verdict, tokens and reflection count;
    `eval.samples` sampled responses and one greedy response per problem."""
    # Re-scored only when a checkpoint, the eval set or the evaluation settings changed.
    profile, lake = pipeline.load_profile(), pipeline.lake()
    inputs = {"stg_problems": lake.table_sha256("stg_problems"), **dict(ablation_checkpoint_versions(pipeline).values())}
    config = {"eval": profile.eval.model_dump(), "generation": profile.generation.model_dump(), "seed": profile.seed}
    result = run_or_reuse(
        context,
        pipeline,
        pipes_subprocess_client,
        "evaluate",
        inputs=inputs,
        config=config,
        artifact_present=lake.has_table("eval_results"),
    )
    return with_column_schema(result, "eval_results", EVAL_SCHEMA)


@dg.asset(
    group_name="evaluation", kinds={"polars", "parquet"}, code_version="ablation_report-v3", deps=["eval_results", "mcts_decode"]
)
def ablation_report(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The paper's Table 5 layout (base, distill_baseline, SFT, +DPO, +balance, +cDPO, +joint,
    +mask) with 95% intervals, a bar chart, and the paper's directions judged by paired
    intervals ("supported" only when the interval excludes zero). Parquet (metadata key `path`):
    one row per (variant, eval_set) with accuracy / no_answer_rate / greedy_accuracy / test_at_k
    and their `_lo`/`_hi` bounds, tokens, reflections, and paired differences
    `{acc,no_answer,greedy}_diff_vs_{prev,sft,dpo}` with bounds and McNemar p-values."""
    lake = pipeline.lake()
    summary = report.summarize_results(lake.read_table("eval_results"))
    written = lake.write_table("ablation_report", summary)
    table = report.markdown_table(summary)
    notes = report.direction_notes(summary)
    context.log.info("\n" + table + "\n" + "\n".join(notes))
    ks = pipeline.load_profile().eval.mcts_decode.test_at
    table7 = table7_md.markdown_table7(table7_md.summarize_decode(lake.read_table("mcts_decode"), ks), ks)
    context.log.info("\nTable 7 (MCTS decode):\n" + table7)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(summary, written),
            "table": dg.MetadataValue.md(table),
            "table7": dg.MetadataValue.md(table7),
            "bar_chart": dg.MetadataValue.md(markdown_image(report.bar_chart_png(summary), "ablation")),
            "direction": dg.MetadataValue.md("\n".join(f"- {n}" for n in notes)),
            "run_seed": pipeline.seed if pipeline.seed is not None else "profile default",
            "rows": dg.MetadataValue.json(json.loads(summary.write_json())),
        },
        data_version=dg.DataVersion(written.sha256),
    )
