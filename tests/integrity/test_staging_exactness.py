"""#21 items 1-3: the staged set is exactly the profile's data; dedupe, split and inputs."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from widen_dag.defs.assets.problems import NO_OVERLAP_CHECK, raw_problems, stg_problems
from widen_dag.defs.partitions import PROBLEM_SHARDS, register_profile_shards
from widen_dag.defs.resources import PipelineResource
from widen_dag.domains.problems import (
    RAW_SCHEMA,
    ProblemSourceError,
    dataset_records,
    inbox_files,
    stage_problems,
    train_eval_overlap,
)
from widen_dag.profiles import DatasetConfig, ProblemsConfig, load_profile
from widen_dag.storage.lake import Lake

SMALL = (
    "extends: tiny\nname: {name}\ndatasets:\n  - {{name: {ds}, domain: arithmetic, shards: 2, role: split,\n"
    "     source: {{kind: arithmetic, n_problems: 60, steps: 2, max_operand: 9, ops: '+-'}}}}\n"
)


def _profile(tmp_path: Path, name: str, ds: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SMALL.format(name=name, ds=ds))
    return str(path)


def _load_all(instance, res, keys):
    for k in keys:
        assert dg.materialize([raw_problems], partition_key=k, resources=res, instance=instance).success


def _stage(instance, res, **kw):
    return dg.materialize(
        [raw_problems.to_source_asset(), stg_problems], selection=[stg_problems], resources=res, instance=instance, **kw
    )


def _failure(result) -> str:
    return "\n".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)


@pytest.fixture()
def small(tmp_path):
    prof = _profile(tmp_path, "small", "arith")
    instance = dg.DagsterInstance.ephemeral()
    register_profile_shards(instance, load_profile(prof))
    res = {"pipeline": PipelineResource(profile=prof, lake_root=str(tmp_path / "lake"))}
    _load_all(instance, res, ["arith-000", "arith-001"])
    return instance, res, Lake(str(tmp_path / "lake"))


def test_a_deleted_raw_shard_fails_staging_naming_it_instead_of_halving_the_set(small):
    instance, res, lake = small
    assert _stage(instance, res).success
    full = lake.read_table("stg_problems").height
    Path(lake.table_path("raw_problems", "arith-001")).unlink()
    result = _stage(instance, res, raise_on_error=False)
    assert not result.success
    assert "arith-001" in _failure(result) and "materialize raw_problems" in _failure(result)
    assert lake.read_table("stg_problems").height == full  # the last good set stays published


def test_staging_records_profile_partitions_and_their_data_versions(small):
    instance, res, lake = small
    result = _stage(instance, res)
    meta = result.asset_materializations_for_node("stg_problems")[0].metadata
    assert meta["profile"].value == "small"
    assert meta["partitions"].value == "arith-000, arith-001"
    assert meta["partition_data_versions"].value == {k: lake.table_sha256("raw_problems", k) for k in ("arith-000", "arith-001")}
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(NO_OVERLAP_CHECK, True)]


def test_another_profile_on_the_same_lake_is_refused_then_adopted_without_mixing(small, tmp_path, monkeypatch):
    instance, res, lake = small
    assert _stage(instance, res).success
    other = _profile(tmp_path, "other", "sums")
    register_profile_shards(instance, load_profile(other))
    res2 = {"pipeline": PipelineResource(profile=other, lake_root=str(tmp_path / "lake"))}
    refused = dg.materialize([raw_problems], partition_key="sums-000", resources=res2, instance=instance, raise_on_error=False)
    assert not refused.success
    assert "holds profile 'small'" in _failure(refused) and "WIDEN_DAG_ADOPT_LAKE=1" in _failure(refused)
    monkeypatch.setenv("WIDEN_DAG_ADOPT_LAKE", "1")
    _load_all(instance, res2, ["sums-000", "sums-001"])
    assert _stage(instance, res2).success
    staged = lake.read_table("stg_problems")
    assert set(staged["source"]) == {"sums"}  # none of 'small's problems came along


def _raw(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """(dataset, question, gold) rows as loaded."""
    return pl.DataFrame(
        [
            {
                "dataset": d,
                "shard": f"{d}-000",
                "row_index": i,
                "domain": "math",
                "source_id": None,
                "question": q,
                "gold_raw": g,
                "meta": "{}",
                "load_error": None,
            }
            for i, (d, q, g) in enumerate(rows)
        ],
        schema=RAW_SCHEMA,
    )


def test_golds_7_and_7_0_are_one_problem_and_never_in_both_splits():
    rows = [("gsm", f"Tom has {i} apples and buys some. How many now?", "7") for i in range(40)]
    rows += [("gsm", f"Tom has {i} apples and buys some.  How many now?", "7.0") for i in range(40)]  # spacing differs too
    staged, quarantine = stage_problems(_raw(rows), ProblemsConfig(eval_fraction=0.5, split_seed=1), {"gsm": "split"})
    assert staged.height == 40 and set(staged["gold"]) == {"7"}
    assert quarantine["reason"].str.starts_with("duplicate of").all() and quarantine.height == 40
    assert train_eval_overlap(staged).height == 0


def test_conflicting_golds_are_quarantined_with_both_values():
    staged, quarantine = stage_problems(
        _raw([("gsm", "What is 3+4?", "7"), ("gsm", "What is 3+4?", "8"), ("gsm", "What is 1+1?", "2")]),
        ProblemsConfig(),
        {"gsm": "split"},
    )
    assert staged["question"].to_list() == ["What is 1+1?"]
    assert quarantine.height == 2
    assert all("conflicting gold answers" in r and "'7'" in r and "'8'" in r for r in quarantine["reason"])


def test_an_inbox_row_repeating_a_benchmark_problem_never_shrinks_the_benchmark():
    rows = [("inbox", "Solve 12*12.", "144"), ("math500", "Solve 12*12.", "\\boxed{144}"), ("math500", "Solve 2*3.", "6")]
    staged, quarantine = stage_problems(_raw(rows), ProblemsConfig(), {"inbox": "train", "math500": "eval"})
    assert staged.filter(pl.col("question") == "Solve 12*12.").select("source", "split").row(0) == ("math500", "eval")
    assert staged.filter(pl.col("split") == "eval").height == 2
    assert quarantine.select("dataset", "reason").row(0)[0] == "inbox"


def test_overlap_check_finds_a_question_in_both_splits():
    staged = pl.DataFrame(
        {
            "problem_id": ["a", "b", "c"],
            "shard": ["s"] * 3,
            "split": ["train", "eval", "train"],
            "question": ["What is 2+2?", "What is  2+2?", "Other?"],
        }
    )
    found = train_eval_overlap(staged)
    assert sorted(found["problem_id"]) == ["a", "b"] and set(found["overlap_on"]) == {"normalised question"}


def _file_dataset(path, **fields):
    return DatasetConfig.model_validate({"name": "f", "domain": "math", "source": {"kind": "file", "path": str(path), **fields}})


def test_a_utf8_bom_costs_no_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + b'{"question": "What is 2+2?", "answer": "4"}\n{"question": "What is 3+3?", "answer": "6"}\n'
    )
    recs = dataset_records(_file_dataset(path), 0)
    assert [r.error for r in recs] == [None, None] and recs[0].question == "What is 2+2?"


def test_a_json_array_file_loads(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"question": "What is 2+2?", "answer": "4"}, {"question": "What is 1+2?", "answer": 3}]))
    assert [r.gold for r in dataset_records(_file_dataset(path), 0)] == ["4", "3"]


def test_parquet_with_other_column_names_fails_listing_found_and_expected(tmp_path):
    path = tmp_path / "other.parquet"
    pl.DataFrame({"problem": ["What is 2+2?"], "solution": ["4"]}).write_parquet(path)
    with pytest.raises(ProblemSourceError) as err:
        dataset_records(_file_dataset(path), 0)
    msg = str(err.value)
    assert str(path) in msg and "['problem', 'solution']" in msg and "['question', 'answer']" in msg


def test_a_corrupt_parquet_error_names_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ProblemSourceError, match="broken.parquet"):
        dataset_records(_file_dataset(path), 0)


def test_an_unreadable_inbox_file_fails_raw_problems_once_with_the_file_name(tmp_path, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bad.parquet").write_bytes(b"garbage")
    monkeypatch.setenv("WIDEN_DAG_INBOX", str(inbox))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(PROBLEM_SHARDS, ["inbox-bad.parquet"])
    res = {"pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path / "lake"))}
    result = dg.materialize(
        [raw_problems], partition_key="inbox-bad.parquet", resources=res, instance=instance, raise_on_error=False
    )
    assert not result.success and "bad.parquet" in _failure(result)
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1 and not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_a_source_whose_rows_are_all_quarantined_fails_staging(tmp_path, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "empty_q.jsonl").write_text("".join(json.dumps({"question": " ", "answer": str(i)}) + "\n" for i in range(5)))
    monkeypatch.setenv("WIDEN_DAG_INBOX", str(inbox))
    instance = dg.DagsterInstance.ephemeral()
    key = "inbox-empty_q.jsonl"
    shards = register_profile_shards(instance, load_profile("tiny"))
    instance.add_dynamic_partitions(PROBLEM_SHARDS, [key])
    res = {"pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path / "lake"))}
    _load_all(instance, res, [*shards, key])
    result = _stage(instance, res, raise_on_error=False)
    assert not result.success and f"{key}: all 5 rows quarantined" in _failure(result)


def test_inbox_takes_what_a_user_drops_and_says_why_it_refuses_a_name(tmp_path):
    for name in (
        "a.jsonl",
        "B.JSONL",
        "c.json",
        "d.parquet",
        "-rf.jsonl",
        "a...jsonl",
        "notes.txt",
        ".hidden.jsonl",
        "e.jsonl.tmp",
    ):
        (tmp_path / name).write_text("")
    taken, refused = inbox_files(tmp_path)
    assert [k for k, _ in taken] == ["inbox-B.JSONL", "inbox-a.jsonl", "inbox-c.json", "inbox-d.parquet"]
    text = "\n".join(refused)
    assert "'-rf.jsonl' starts with '-'" in text
    assert "'a...jsonl' holds '..'" in text
    assert "'notes.txt' is not a problem file" in text
    assert len(refused) == 3  # hidden and temporary names wait silently


def test_a_missing_inbox_folder_is_reported(tmp_path):
    taken, refused = inbox_files(tmp_path / "nowhere")
    assert not taken and "does not exist" in refused[0] and "nowhere" in refused[0]
