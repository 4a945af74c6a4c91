"""Materialization metadata shared by all assets: row counts, previews, paths, schemas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl

from widen_dag.reporting.columns import column_description
from widen_dag.reporting.markdown import markdown_preview
from widen_dag.storage.lake import Written


def column_schema(table: str, schema: Mapping[str, Any]) -> dg.TableSchema:
    """The UI's Columns tab of ``table``: each column's name, type and description
    (widen_dag.reporting.columns)."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype), description=column_description(table, name)) for name, dtype in schema.items()]
    )


def with_column_schema(result: dg.MaterializeResult, table: str, schema: Mapping[str, Any]) -> dg.MaterializeResult:
    """A worker's (or a reused) materialization with ``table``'s described column schema added:
    workers speak Pipes only, so the Dagster layer attaches it."""
    return dg.MaterializeResult(
        metadata={**(result.metadata or {}), "dagster/column_schema": column_schema(table, schema)},
        data_version=result.data_version,
        check_results=result.check_results,
        tags=result.tags,
    )


def table_metadata(df: pl.DataFrame, written: Written, **extra: Any) -> dict[str, Any]:
    # The lake writes every table as <root>/<asset>/<partition>.parquet: the asset is the folder.
    table = written.uri.rstrip("/").split("/")[-2]
    return {
        "dagster/row_count": df.height,
        "dagster/column_schema": column_schema(table, df.schema),
        "path": dg.MetadataValue.path(written.uri),
        "sha256": written.sha256,
        "preview": dg.MetadataValue.md(markdown_preview(df)),
        **extra,
    }


def counts_markdown(df: pl.DataFrame, by: list[str]) -> dg.MetadataValue:
    if df.is_empty():
        return dg.MetadataValue.md("(none)")
    return dg.MetadataValue.md(markdown_preview(df.group_by(by).len("rows").sort(by), rows=200))
