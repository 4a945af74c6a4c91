"""#21 item 5: `widen-dag trace` on a partial lake, and manifests that move with their lake."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from tests.test_trace import traced_lake  # noqa: F401  (the hand-built lake with two checkpoints)
from widen_dag.cli import main
from widen_dag.lineage.trace import TraceError, trace_checkpoint, trace_pair
from widen_dag.storage.artifacts import MANIFEST, checkpoint_dir, read_manifest, write_manifest
from widen_dag.storage.lake import Lake


def test_pair_trace_without_preference_pairs_says_what_to_materialize(traced_lake, capsys):  # noqa: F811
    Path(traced_lake.table_path("preference_pairs")).unlink()
    with pytest.raises(TraceError, match="preference_pairs: not in the lake"):
        trace_pair(traced_lake, "dpo-joint_masked", "P5")
    assert main(["trace", "dpo-joint_masked", "--pair", "P5", "--lake", traced_lake.root]) == 2
    assert "materialize preference_pairs" in capsys.readouterr().err


def test_checkpoint_trace_without_preference_pairs_prints_what_it_can_and_exits_nonzero(traced_lake, capsys):  # noqa: F811
    Path(traced_lake.table_path("preference_pairs")).unlink()
    assert main(["trace", "dpo-joint_masked", "--lake", traced_lake.root]) == 3
    out = capsys.readouterr()
    assert "rows: 2" in out.out and "incomplete: preference_pairs" in out.err


def test_pair_trace_with_its_search_trees_partition_missing_names_it(traced_lake, capsys):  # noqa: F811
    nodes = traced_lake.read_table("search_trees", "hand-000")
    traced_lake.write_table("search_trees", nodes.filter(~pl.col("tree_id").str.starts_with("P5")), "hand-001")
    Path(traced_lake.table_path("search_trees", "hand-000")).unlink()  # P5's shard is gone, another remains
    stg = traced_lake.read_table("stg_problems")
    traced_lake.write_table("stg_problems", stg.with_columns(shard=pl.lit("hand-000")))
    with pytest.raises(TraceError, match=r"search_trees\[hand-000\] is not in the lake"):
        trace_pair(traced_lake, "dpo-joint_masked", "P5")
    assert main(["trace", "dpo-joint_masked", "--pair", "P5", "--lake", traced_lake.root]) == 2
    err = capsys.readouterr().err
    assert "materialize search_trees" in err


def test_manifest_paths_are_lake_relative_so_a_moved_lake_points_at_itself(tmp_path):
    lake = Lake(str(tmp_path / "a" / "lake"))
    folder = Path(checkpoint_dir(lake, "dpo-cdpo"))  # a local lake: the URI is a path
    folder.mkdir(parents=True)
    write_manifest(
        folder,
        {
            "kind": "dpo",
            "base": str(checkpoint_dir(lake, "sft")),
            "inputs": {},
            "rows": 0,
            "other": ["/elsewhere/x", str(tmp_path / "a" / "lake-other")],
        },
    )
    raw = (folder / MANIFEST).read_text()
    assert str(tmp_path / "a") not in raw.replace(str(tmp_path / "a" / "lake-other"), "")
    shutil.move(str(tmp_path / "a" / "lake"), str(tmp_path / "b"))
    moved = Lake(str(tmp_path / "b"))
    manifest = read_manifest(checkpoint_dir(moved, "dpo-cdpo"))
    assert manifest["base"] == str((tmp_path / "b" / "checkpoints" / "sft").resolve())
    assert manifest["other"] == ["/elsewhere/x", str(tmp_path / "a" / "lake-other")]
    assert trace_checkpoint(moved, "dpo-cdpo")["base"] == manifest["base"]
    assert json.loads(raw)["base"] == "{lake}/checkpoints/sft"
