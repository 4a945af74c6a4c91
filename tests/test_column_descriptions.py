"""Every column of every table asset carries a description in the UI's Columns tab."""

from __future__ import annotations

import polars as pl
import pytest

from tests.lakes import build_small_lake, run_sql_models
from tests.test_eval_stats import _results
from widen_dag.defs.metadata import column_schema, table_metadata
from widen_dag.domains.problems import QUARANTINE_SCHEMA, RAW_SCHEMA, STAGED_SCHEMA
from widen_dag.evaluate import EVAL_SCHEMA
from widen_dag.evaluate.report import summarize_results
from widen_dag.evaluate.table7 import DECODE_SCHEMA
from widen_dag.reporting.columns import column_description
from widen_dag.search.store import NODE_SCHEMA
from widen_dag.train import distill


class _Encoding:
    def __init__(self, text: str) -> None:
        self.ids = text.split()


class _WordTokenizer:
    def encode_batch(self, texts, add_special_tokens=False):
        return [_Encoding(t) for t in texts]


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, pl.DataFrame]:
    """One frame per table asset, made by the code that makes the asset (empty where only the
    schema is cheap to get)."""
    from widen_dag.datasets.lengths import node_lengths

    lake = build_small_lake(tmp_path_factory.mktemp("columns"))
    nodes = lake.read_table("search_trees", "hand-000")
    n = 20
    results = pl.DataFrame(
        _results("base", [i % 2 == 0 for i in range(n)], [False] * n)
        + _results("sft", [i % 3 == 0 for i in range(n)], [False] * n)
    )
    long_cot = tmp_path_factory.mktemp("distill") / "long_cot.jsonl"
    long_cot.write_text('{"q": "1+1?", "a": "Wait, 1+1 is 2."}\n')
    return {
        "raw_problems": pl.DataFrame(schema=RAW_SCHEMA),
        "stg_problems": pl.DataFrame(schema=STAGED_SCHEMA),
        "problem_quarantine": pl.DataFrame(schema=QUARANTINE_SCHEMA),
        "search_trees": nodes,
        "node_lengths": node_lengths(nodes, _WordTokenizer()),
        "distill_dataset": pl.DataFrame(distill.file_rows(str(long_cot), "q", "a", str)),
        **run_sql_models(lake),
        "eval_results": pl.DataFrame(schema=EVAL_SCHEMA),
        "mcts_decode": pl.DataFrame(schema=DECODE_SCHEMA),
        "ablation_report": summarize_results(results),
    }


def test_every_parquet_asset_of_the_definitions_is_covered_here(tables):
    from widen_dag.definitions import defs

    graph = defs.resolve_asset_graph()
    parquet_assets = {k.to_user_string() for k in graph.get_all_asset_keys() if "parquet" in graph.get(k).kinds}
    assert parquet_assets == set(tables)


def test_every_column_of_every_table_asset_has_a_description(tables):
    missing = [
        f"{table}.{column}" for table, df in tables.items() for column in df.columns if not column_description(table, column)
    ]
    assert missing == []


def test_the_column_schema_in_an_assets_metadata_carries_the_descriptions(tables, tmp_path):
    from widen_dag.storage.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    df = tables["preference_pairs"]
    schema = table_metadata(df, lake.write_table("preference_pairs", df))["dagster/column_schema"]
    by_name = {c.name: c.description for c in schema.columns}
    assert list(by_name) == df.columns and all(by_name.values())
    assert "fine-grained DPO masks it" in by_name["common_prefix_tokens"]
    nodes = column_schema("search_trees", NODE_SCHEMA)
    assert all(c.description for c in nodes.columns) and nodes.columns[0].type == "String"


def test_generated_report_columns_say_which_interval_and_reference_they_hold():
    assert (
        column_description("ablation_report", "test_at_4")
        == "share of problems solved by at least one of their first 4 samples (Test@4)"
    )
    assert column_description("ablation_report", "acc_diff_vs_sft_lo") == "lower end of the 95% interval of acc_diff_vs_sft"
    assert "previous (prev_variant)" in column_description("ablation_report", "no_answer_diff_vs_prev")
    assert column_description("ablation_report", "not_a_column") == ""
