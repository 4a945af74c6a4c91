"""Materialization metadata shared by all assets: row counts, previews, paths, schemas."""

from __future__ import annotations

from typing import Any

import dagster as dg
import polars as pl

from widen_dag.reporting.markdown import markdown_preview
from widen_dag.storage.lake import Written


def table_metadata(df: pl.DataFrame, written: Written, **extra: Any) -> dict[str, Any]:
    schema = dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in df.schema.items()])
    return {
        "dagster/row_count": df.height,
        "dagster/column_schema": schema,
        "path": dg.MetadataValue.path(written.uri),
        "sha256": written.sha256,
        "preview": dg.MetadataValue.md(markdown_preview(df)),
        **extra,
    }


def counts_markdown(df: pl.DataFrame, by: list[str]) -> dg.MetadataValue:
    if df.is_empty():
        return dg.MetadataValue.md("(none)")
    return dg.MetadataValue.md(markdown_preview(df.group_by(by).len("rows").sort(by), rows=200))
