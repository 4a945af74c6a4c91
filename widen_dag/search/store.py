"""Per-tree checkpoints of a shard's search, and the published node table.

Every finished tree is written at once as its own small Parquet file (atomically), in a
folder keyed by the shard and a hash of everything that shapes the trees (search config,
sampling, model, seed). A killed run, rerun, finds those files, skips the finished trees
and searches only the rest; since a tree is written whole or not at all, no node is ever
written twice. Publishing concatenates them into ``search_trees/<shard>.parquet``.
"""

from __future__ import annotations

import hashlib
import io
import json

import polars as pl

from widen_dag.search.tree import NODE_COLUMNS, Tree
from widen_dag.storage.lake import Lake, Written

NODE_SCHEMA = {
    "tree_id": pl.String,
    "problem_id": pl.String,
    "node_id": pl.String,
    "parent_id": pl.String,
    "depth": pl.Int32,
    "node_type": pl.String,
    "model": pl.String,
    "text": pl.String,
    "n_tokens": pl.Int32,
    "visits": pl.Int32,
    "value_sum": pl.Float64,
    "is_terminal": pl.Boolean,
    "reward": pl.Float64,
    "answer": pl.String,
    "no_answer": pl.Boolean,
    "finish_reason": pl.String,
    "ended_by": pl.String,
    "samples": pl.Int32,
}
TREE_SCHEMA = {
    "tree_id": pl.String,
    "problem_id": pl.String,
    "rollouts": pl.Int32,
    "correct": pl.Int32,
    "outcome": pl.String,
    "nodes": pl.Int32,
}
assert tuple(NODE_SCHEMA) == NODE_COLUMNS


def config_hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def tree_frame(tree: Tree) -> pl.DataFrame:
    return pl.DataFrame(tree.rows(), schema=NODE_SCHEMA)


class TreeStore:
    def __init__(self, lake: Lake, shard: str, key: str) -> None:
        self.lake = lake
        self.shard = shard
        self.folder = lake.dir_path("search_checkpoints", f"{shard}-{key}")

    def _path(self, tree_id: str) -> str:
        return f"{self.folder}/{tree_id}.parquet"

    def finished(self) -> set[str]:
        fs = self.lake.fs
        if not fs.exists(self.folder):
            return set()
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(self.folder, detail=False)]
        return {n[: -len(".parquet")] for n in names if n.endswith(".parquet") and not n.startswith(".")}

    def save(self, tree: Tree) -> None:
        frame = tree_frame(tree).with_columns(
            pl.lit(tree.rollouts).alias("_rollouts"),
            pl.lit(len(tree.correct)).alias("_correct"),
            pl.lit(tree.outcome).alias("_outcome"),
        )
        buf = io.BytesIO()
        frame.write_parquet(buf)
        self.lake.write_bytes(self._path(tree.tree_id), buf.getvalue())

    def load(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(node table, one summary row per tree) of every checkpointed tree, in tree order."""
        ids = sorted(self.finished())
        if not ids:
            return pl.DataFrame(schema=NODE_SCHEMA), pl.DataFrame(schema=TREE_SCHEMA)
        frames = []
        for tid in ids:
            with self.lake.fs.open(self._path(tid), "rb") as fh:
                frames.append(pl.read_parquet(fh))
        allf = pl.concat(frames)
        trees = allf.group_by("tree_id", "problem_id", maintain_order=True).agg(
            pl.col("_rollouts").first().cast(pl.Int32).alias("rollouts"),
            pl.col("_correct").first().cast(pl.Int32).alias("correct"),
            pl.col("_outcome").first().alias("outcome"),
            pl.len().cast(pl.Int32).alias("nodes"),
        )
        nodes = allf.drop("_rollouts", "_correct", "_outcome").cast(NODE_SCHEMA)  # type: ignore[arg-type]
        return nodes, trees.cast(TREE_SCHEMA)  # type: ignore[arg-type]

    def publish(self, nodes: pl.DataFrame) -> Written:
        return self.lake.write_table("search_trees", nodes, self.shard)
