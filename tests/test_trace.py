from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lakes import build_small_lake, run_sql_models
from widen_dag.lineage.trace import TraceError, pair_picture, render, trace_checkpoint, trace_pair

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def traced_lake(tmp_path):
    lake = build_small_lake(tmp_path)
    run_sql_models(lake)
    import hashlib

    def sha(asset):
        return hashlib.sha256(Path(lake.table_path(asset)).read_bytes()).hexdigest()

    for name, manifest in {
        "sft": {
            "kind": "sft",
            "base": "student",
            "inputs": {"sft_dataset": sha("sft_dataset")},
            "rows": 3,
            "problem_ids": ["P1", "P2", "P5"],
        },
        "dpo-joint_masked": {
            "kind": "dpo",
            "variant": "joint_masked",
            "base": "sft",
            "rows": 2,
            "inputs": {"preference_pairs": sha("preference_pairs"), "sft_checkpoint": {"sft_dataset": "0" * 64}},
            "config": {"balanced": True},
            "problem_ids": ["P1", "P5"],
        },
    }.items():
        folder = Path(lake.dir_path("checkpoints", name))
        folder.mkdir(parents=True)
        (folder / "widen_dag_checkpoint.json").write_text(json.dumps(manifest))
    return lake


def test_checkpoint_trace_lists_data_versions_and_pairs(traced_lake):
    report = trace_checkpoint(traced_lake, "dpo_checkpoint:joint_masked")
    assert report["inputs"]["preference_pairs"]["now"] == report["inputs"]["preference_pairs"]["trained_on"]
    assert report["inputs"]["sft_checkpoint"]["sft_dataset"]["now"] != "0" * 64  # data changed since: shown
    assert [p["problem_id"] for p in report["pairs"]] == ["P1", "P5"]
    text = render(report)
    assert "preference_pairs:" in text and "(current)" in text and "(changed since)" in text


def test_pair_trace_reaches_tree_nodes_and_the_problem(traced_lake):
    report = trace_pair(traced_lake, "dpo-joint_masked", "P5")
    assert report["problem"]["problem_id"] == "P5" and report["problem"]["split"] == "train"
    assert [n["node_id"] for n in report["chosen"]] == ["P5-s0/0", "P5-s0/1", "P5-s0/2"]
    assert [n["node_id"] for n in report["rejected"]] == ["P5-s0/0", "P5-s0/1", "P5-s0/3"]
    assert report["rejected"][-1]["reward"] == 0.0


def test_trace_errors_name_what_is_missing(traced_lake):
    with pytest.raises(TraceError, match="only DPO checkpoints have pairs"):
        trace_pair(traced_lake, "sft", "P1")
    with pytest.raises(TraceError, match="not trained on a pair for problem 'P2'"):
        trace_pair(traced_lake, "dpo-joint_masked", "P2")


def test_trace_console_script(traced_lake):
    cli = Path(sys.executable).parent / "widen-dag"
    res = subprocess.run([str(cli), "trace", "sft", "--lake", traced_lake.root, "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["problem_ids"] == ["P1", "P2", "P5"]
    bad = subprocess.run([str(cli), "trace", "nope", "--lake", traced_lake.root], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("widen-dag trace: no checkpoint manifest")


def test_a_pair_is_drawn_over_its_tree_and_the_trace_command_writes_the_png(traced_lake, tmp_path, capsys):
    from widen_dag.cli import main

    picture = pair_picture(traced_lake, trace_pair(traced_lake, "dpo-joint_masked", "P5"))
    assert picture.nodes == 4 and picture.leaves == {"correct": 1, "wrong": 1}
    assert picture.paths == {"chosen": 2, "rejected": 2}
    out = tmp_path / "pair.png"
    assert main(["trace", "dpo-joint_masked", "--pair", "P5", "--png", str(out), "--lake", traced_lake.root]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and "chosen:" in capsys.readouterr().out
    assert main(["trace", "sft", "--png", str(out), "--lake", traced_lake.root]) == 2
    assert "--png draws a pair" in capsys.readouterr().err
