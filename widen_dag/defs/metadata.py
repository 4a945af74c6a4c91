"""Materialization metadata shared by all assets: row counts, previews, paths, schemas."""

from __future__ import annotations

from typing import Any

import dagster as dg
import polars as pl

from widen_dag.lake import Written


def markdown_preview(df: pl.DataFrame, rows: int = 5, width: int = 80) -> str:
    """The first rows as a Markdown table, long cells cut so the UI stays readable."""
    head = df.head(rows)
    cols = head.columns

    def cell(v: Any) -> str:
        text = "" if v is None else str(v)
        text = text.replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    return "\n".join(lines)


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
