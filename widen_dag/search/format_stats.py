"""How well a model follows the node format: per node type, the no-answer rate and how the
thoughts ended (closing tag, extra stop string, end of turn, foreign tag, token limit).

Reported as ``search_trees`` metadata, so a user sees at a glance when a model does not
follow the format (e.g. every thought cut off by the token limit, or no answer extractable).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from widen_dag.search.tree import NODE_ENDS


def generated_nodes(nodes: pl.DataFrame) -> pl.DataFrame:
    """The nodes a model wrote: not the root (the question) nor the fixed reflection sentence."""
    return nodes.filter(~pl.col("node_type").is_in(["root", "reflection"]))


def format_stats(nodes: pl.DataFrame) -> list[dict[str, Any]]:
    """One row per generated node type: nodes, samples, no-answer rate and the share of each end.

    A node's no-answer is set when its path ends there without an extractable answer (a cut-off
    or malformed thought, or an answer node with nothing to extract); samples counts merged twins.
    """
    generated = generated_nodes(nodes)
    if generated.is_empty():
        return []
    if "samples" not in generated.columns:
        generated = generated.with_columns(samples=pl.lit(1))
    out = (
        generated.group_by("node_type")
        .agg(
            pl.len().alias("nodes"),
            pl.col("samples").fill_null(1).sum().alias("samples"),
            pl.col("no_answer").fill_null(False).mean().alias("no_answer_rate"),
            *[(pl.col("ended_by") == end).fill_null(False).mean().alias(end) for end in NODE_ENDS if end != "fixed"],
        )
        .sort("node_type")
    )
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in out.iter_rows(named=True)]


def overall_ends(nodes: pl.DataFrame) -> dict[str, float]:
    """Shares of generated nodes closed by their tag (or a stop string), ended by end of turn,
    ended by another type's closing tag (closed or a dead end, per search.foreign_tag_ends_thought)
    and cut off by the per-node token limit; they sum to 1."""
    generated = generated_nodes(nodes)
    n = generated.height
    if not n:
        return {"tag_closed_share": 0.0, "eos_ended_share": 0.0, "foreign_tag_share": 0.0, "cut_off_share": 0.0}
    ended = generated["ended_by"].fill_null("")
    return {
        "tag_closed_share": round(float(ended.is_in(["tag", "stop_string"]).sum()) / n, 4),
        "eos_ended_share": round(float((ended == "eos").sum()) / n, 4),
        "foreign_tag_share": round(float((ended == "foreign_tag").sum()) / n, 4),
        "cut_off_share": round(float((ended == "length").sum()) / n, 4),
    }
