"""The problem inbox sensor, the profile-shard sensor, and an inbox file staged end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from widen_dag.defs.assets.problems import raw_problems, stg_problems
from widen_dag.defs.automation import problem_inbox, profile_shards
from widen_dag.defs.partitions import PROBLEM_SHARDS
from widen_dag.defs.resources import PipelineResource
from widen_dag.storage.lake import Lake


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def inbox(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("WIDEN_DAG_INBOX", str(folder))
    return folder


def _evaluate(instance, cursor, lake_root):
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"pipeline": PipelineResource(profile="tiny", lake_root=str(lake_root))}
    )
    return problem_inbox(ctx)


def _apply(instance, result: dg.SensorResult) -> None:
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_inbox_sensor_adds_a_partition_and_requests_search_for_exactly_each_new_file(inbox, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    _write_jsonl(
        inbox / "batch_a.jsonl", [{"question": "Ann has 2 pens. Ann gets 3 more. How many pens does Ann have?", "answer": "5"}]
    )
    (inbox / "batch_b.parquet").write_bytes(b"")  # content is read by the run, not the sensor
    (inbox / ".batch_c.jsonl").write_text("{}\n")  # a writer's temporary name: not yet
    (inbox / "notes.txt").write_text("not a problem file")

    first = _evaluate(instance, None, tmp_path / "lake")
    keys = ["inbox-batch_a.jsonl", "inbox-batch_b.parquet"]
    assert [r.partition_key for r in first.run_requests] == keys
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [keys]
    assert all(r.partitions_def_name == PROBLEM_SHARDS for r in first.dynamic_partitions_requests)
    assert sorted(json.loads(first.cursor)) == ["batch_a.jsonl", "batch_b.parquet"]
    _apply(instance, first)

    again = _evaluate(instance, first.cursor, tmp_path / "lake")
    assert not again.run_requests and "no new problem files" in again.skip_reason.skip_message

    (inbox / ".batch_c.jsonl").rename(inbox / "batch_c.jsonl")
    st = (inbox / "batch_a.jsonl").stat()
    os.utime(inbox / "batch_a.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten in place
    third = _evaluate(instance, again.cursor, tmp_path / "lake")
    assert sorted(r.partition_key for r in third.run_requests) == ["inbox-batch_a.jsonl", "inbox-batch_c.jsonl"]
    # batch_a is already a partition: only batch_c is added.
    assert [list(r.partition_keys) for r in third.dynamic_partitions_requests] == [["inbox-batch_c.jsonl"]]
    assert len({r.run_key for r in [*first.run_requests, *third.run_requests]}) == 4


def test_inbox_sensor_skips_unsafe_file_names_with_a_warning_and_takes_the_rest(inbox, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    _write_jsonl(inbox / "bad name!.jsonl", [])
    _write_jsonl(inbox / "good.jsonl", [])
    result = _evaluate(instance, None, tmp_path / "lake")
    assert [r.partition_key for r in result.run_requests] == ["inbox-good.jsonl"]


def test_inbox_sensor_on_a_missing_folder_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEN_DAG_INBOX", str(tmp_path / "nowhere"))
    result = _evaluate(dg.DagsterInstance.ephemeral(), None, tmp_path / "lake")
    assert not result.run_requests and result.skip_reason


def test_profile_shards_sensor_registers_the_profile_shards_once(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    ctx = dg.build_sensor_context(
        instance=instance, resources={"pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path))}
    )
    result = profile_shards(ctx)
    assert not result.run_requests
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [
        ["arithmetic-000", "arithmetic-001", "instructions-000"]
    ]
    _apply(instance, result)
    again = profile_shards(
        dg.build_sensor_context(
            instance=instance, resources={"pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path))}
        )
    )
    assert not again.dynamic_partitions_requests and again.skip_reason


def test_an_inbox_file_is_staged_as_its_own_train_shard_next_to_the_profile_shards(inbox, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    rows = [
        {"question": f"Eve has {a} coins. Eve gets {b} more. How many coins does Eve have?", "answer": str(a + b)}
        for a, b in [(3, 4), (5, 6), (7, 1)]
    ]
    rows.append({"question": "", "answer": "1"})  # quarantined, not fatal
    _write_jsonl(inbox / "new_batch.jsonl", rows)
    key = "inbox-new_batch.jsonl"
    instance.add_dynamic_partitions(PROBLEM_SHARDS, ["arithmetic-000", "arithmetic-001", "instructions-000", key])
    res = {"pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path / "lake"))}
    for k in ("arithmetic-000", "arithmetic-001", "instructions-000", key):
        assert dg.materialize([raw_problems], partition_key=k, resources=res, instance=instance).success
    assert dg.materialize(
        [raw_problems.to_source_asset(), stg_problems], selection=[stg_problems], resources=res, instance=instance
    ).success
    lake = Lake(str(tmp_path / "lake"))
    staged = lake.read_table("stg_problems")
    mine = staged.filter(staged["shard"] == key)
    assert mine.height == 3 and set(mine["split"]) == {"train"}  # profile inbox.role: train
    assert sorted(mine["gold"]) == ["11", "7", "8"]
    assert staged.filter(staged["shard"] == "arithmetic-000").height > 100
    quarantine = lake.read_table("problem_quarantine")
    assert quarantine.filter(quarantine["shard"] == key).height == 1
