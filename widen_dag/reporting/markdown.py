"""Markdown for metadata: tables, previews of frames, and the typed values Pipes workers report.

A Pipes worker reports metadata as plain dicts (``{"raw_value": ..., "type": "md"}``); these
helpers build them, and the Dagster layer renders the same tables for its own assets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl


def md(text: str) -> dict[str, Any]:
    """A Markdown metadata value as a Pipes worker reports it."""
    return {"raw_value": text, "type": "md"}


def json_value(value: Any) -> dict[str, Any]:
    """A JSON metadata value as a Pipes worker reports it."""
    return {"raw_value": value, "type": "json"}


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], width: int = 80) -> str:
    """A Markdown table; long cells are cut so the UI stays readable."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v, width) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_preview(df: pl.DataFrame, rows: int = 5, width: int = 80) -> str:
    """The first rows of a frame as a Markdown table."""
    head = df.head(rows)
    return markdown_table(head.columns, head.iter_rows(), width)
