from __future__ import annotations

import json

import polars as pl
import pytest

from widen_dag.domains.problems import ProblemSourceError, dataset_records, load_shard, stage_problems
from widen_dag.profiles import DatasetConfig, ProblemsConfig


def _dataset(path, shards=1, role="split", **fields):
    return DatasetConfig.model_validate(
        {"name": "bad", "domain": "math", "shards": shards, "role": role, "source": {"kind": "file", "path": str(path), **fields}}
    )


def _stage(tmp_path, lines: list[bytes], cfg=ProblemsConfig(), **fields):
    path = tmp_path / "problems.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    raw = load_shard(_dataset(path, **fields), 0, seed=0)
    return stage_problems(raw, cfg, {"bad": "split"})


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_staged(tmp_path):
    good = {"question": "What is 2+2?", "answer": "#### 4"}
    lines = [
        json.dumps(good).encode(),
        json.dumps({"question": "No answer here"}).encode(),
        json.dumps({"question": "   ", "answer": "#### 1"}).encode(),
        b'{"question": "caf\xe9 au lait", "answer": "#### 3"}',
        b"{not json",
        json.dumps({"question": "x" * 30_000, "answer": "#### 1"}).encode(),
        json.dumps({"question": "What is NaN?", "answer": float("nan")}).encode(),
        json.dumps(good).encode(),  # exact duplicate
        json.dumps({"question": "Half of 3?", "answer": "#### 1.5"}).encode(),
        json.dumps(["a", "list"]).encode(),
    ]
    staged, quarantine = _stage(tmp_path, lines)
    assert staged["question"].to_list() == ["What is 2+2?", "Half of 3?"]
    reasons = dict(zip(quarantine["row_index"].to_list(), quarantine["reason"].to_list(), strict=True))
    assert reasons[1] == "missing field(s): answer"
    assert reasons[2] == "empty question"
    assert reasons[3].startswith("undecodable bytes (utf-8)")
    assert reasons[4].startswith("invalid JSON")
    assert "over max_question_chars" in reasons[5]
    assert reasons[6].startswith("gold answer does not parse")
    assert reasons[7].startswith("duplicate of math-")
    assert "not an object" in reasons[9]
    assert quarantine.height == 8


def test_same_source_id_with_different_content_is_quarantined(tmp_path):
    lines = [json.dumps({"id": 7, "question": f"What is {i}+1?", "answer": f"#### {i + 1}"}).encode() for i in range(2)]
    staged, quarantine = _stage(tmp_path, lines, id_field="id")
    assert staged.height == 1
    assert quarantine["reason"].to_list() == ["duplicate source id '7' with different content"]


def test_split_is_seeded_per_problem_and_independent_of_sharding(tmp_path):
    lines = [json.dumps({"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"}).encode() for i in range(400)]
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(lines))
    cfg = ProblemsConfig(eval_fraction=0.25, split_seed=3)
    one = stage_problems(load_shard(_dataset(path), 0, 0), cfg, {})[0]
    sharded = pl.concat([load_shard(_dataset(path, shards=3), i, 0) for i in range(3)])
    three = stage_problems(sharded, cfg, {})[0]
    assert one.sort("problem_id").select("problem_id", "split").equals(three.sort("problem_id").select("problem_id", "split"))
    share = (one["split"] == "eval").mean()
    assert 0.18 < share < 0.32
    other = stage_problems(load_shard(_dataset(path), 0, 0), ProblemsConfig(eval_fraction=0.25, split_seed=4), {})[0]
    assert not other.select("split").equals(one.select("split"))


def test_dataset_roles_fix_the_split(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": f"#### {i}"}) for i in range(20)))
    staged, _ = stage_problems(load_shard(_dataset(path, role="eval"), 0, 0), ProblemsConfig(), {"bad": "eval"})
    assert set(staged["split"]) == {"eval"}


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(ProblemSourceError, match="does not exist"):
        dataset_records(_dataset(tmp_path / "nope.jsonl"), seed=0)


def test_planbench_and_math_sources_stage_without_quarantine(datasets_dir):
    bw = DatasetConfig.model_validate(
        {
            "name": "bw",
            "domain": "blocksworld",
            "source": {"kind": "planbench", "path": str(datasets_dir / "blocksworld" / "task_1_plan_generation.json")},
        }
    )
    math500 = DatasetConfig.model_validate(
        {
            "name": "m5",
            "domain": "math",
            "source": {
                "kind": "file",
                "path": str(datasets_dir / "math500" / "test.jsonl"),
                "question_field": "problem",
                "answer_field": "answer",
                "id_field": "unique_id",
            },
        }
    )
    raw = pl.concat([load_shard(bw, 0, 0), load_shard(math500, 0, 0)])
    staged, quarantine = stage_problems(raw, ProblemsConfig(), {})
    assert quarantine.height == 0
    assert staged.group_by("domain").len().sort("domain").rows() == [("blocksworld", 500), ("math", 500)]


def test_a_datasets_answer_fallback_travels_with_its_staged_problems_to_evaluation(tmp_path):
    from widen_dag.evaluate import eval_problem_sets

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"}) for i in range(6)))
    plain = stage_problems(load_shard(_dataset(path, role="eval"), 0, 0), ProblemsConfig(), {"bad": "eval"})[0]
    flagged_cfg = _dataset(path, role="eval").model_copy(update={"answer_fallback": True})
    flagged = stage_problems(load_shard(flagged_cfg, 0, 0), ProblemsConfig(), {"bad": "eval"})[0]
    # the same problems (ids), but a changed row: evaluation sees the reading, and reruns on a change
    assert plain["problem_id"].to_list() == flagged["problem_id"].to_list()
    assert plain["meta"].to_list() != flagged["meta"].to_list()
    assert {p.answer_fallback for p in eval_problem_sets(plain)["bad"]} == {False}
    assert {p.answer_fallback for p in eval_problem_sets(flagged)["bad"]} == {True}


def test_answer_fallback_on_a_blocksworld_set_is_refused_at_load():
    with pytest.raises(ValueError, match="answer_fallback has no reading for blocksworld"):
        DatasetConfig.model_validate(
            {"name": "bw", "domain": "blocksworld", "answer_fallback": True, "source": {"kind": "planbench", "path": "x.json"}}
        )
