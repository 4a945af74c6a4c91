"""The real profiles' path without weights or network: hub datasets (read from a local
folder the way `datasets` reads a hub id), the distillation baseline for every domain, and
per-model memory shares for a policy and a critic on one GPU."""

from __future__ import annotations

import json

import polars as pl
import pytest

from widen_dag.domains import blocksworld
from widen_dag.domains.problems import ProblemSourceError, load_shard, stage_problems
from widen_dag.profiles import DatasetConfig, ProblemsConfig, load_profile
from widen_dag.profiles.schema import HubSource, Profile
from widen_dag.train import distill


@pytest.mark.parametrize("name", ["qwen2_5_1_5b_math", "llama3_1_8b_planning", "llama3_1_8b_planning_k8s"])
def test_real_profiles_read_hub_datasets_not_this_repositorys_shared_folder(name):
    profile = load_profile(name)
    assert all(d.source.kind == "hub" for d in profile.datasets)
    assert "shared/datasets" not in json.dumps(profile.model_dump())


def test_hub_loader_reads_a_local_datasets_folder_with_field_names_ids_and_a_filter(tmp_path, datasets_dir):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    lines = (datasets_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:12]
    rows = [dict(json.loads(line), idx=i, parity="even" if i % 2 == 0 else "odd") for i, line in enumerate(lines)]
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = HubSource(name=str(folder), split="test", id_field="idx", where={"parity": "even"})
    raw = load_shard(DatasetConfig(name="gsm8k_test", domain="math", source=source, role="eval"), 0, seed=0)
    assert raw.height == 6 and raw["source_id"].to_list() == ["0", "2", "4", "6", "8", "10"]
    staged, quarantine = stage_problems(raw, ProblemsConfig(), {"gsm8k_test": "eval"})
    assert quarantine.is_empty() and staged.height == 6
    assert staged["gold"][0] == rows[0]["answer"].split("####")[-1].strip()


def test_hub_loader_names_a_missing_column_and_a_missing_dataset(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "test.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(ProblemSourceError, match="no column.*question"):
        load_shard(DatasetConfig(name="d", domain="math", source=HubSource(name=str(folder))), 0, seed=0)
    with pytest.raises(ProblemSourceError, match="offline: download it"):
        load_shard(DatasetConfig(name="d", domain="math", source=HubSource(name=str(tmp_path / "nowhere"))), 0, seed=0)


def test_hub_loader_maps_planbench_rows_for_blocksworld(tmp_path, datasets_dir):
    data = json.loads((datasets_dir / "blocksworld" / "task_1_plan_generation.json").read_text())["instances"][:4]
    folder = tmp_path / "planbench"
    folder.mkdir()
    rows = [
        dict(query=r["query"], ground_truth_plan=r["ground_truth_plan"], instance_id=r["instance_id"], domain="blocksworld")
        for r in data
    ]
    pl.DataFrame(rows).write_parquet(folder / "train.parquet")
    source = HubSource(
        name=str(folder),
        split="train",
        question_field="query",
        answer_field="ground_truth_plan",
        id_field="instance_id",
        where={"domain": "blocksworld"},
    )
    raw = load_shard(DatasetConfig(name="bw", domain="blocksworld", source=source), 0, seed=0)
    staged, quarantine = stage_problems(raw, ProblemsConfig(eval_fraction=0.0), {"bw": "split"})
    assert quarantine.is_empty() and staged.height == 4
    for r in staged.iter_rows(named=True):
        assert blocksworld.validate(blocksworld.parse_statement(r["question"]), blocksworld.parse_plan(r["gold"])).valid


def _staged(domain, question, gold, meta="{}"):
    return pl.DataFrame(
        [
            {
                "problem_id": "p1",
                "domain": domain,
                "split": "train",
                "question": question,
                "prompt": f"solve: {question}",
                "gold": gold,
                "meta": meta,
            }
        ]
    )


def test_the_synthetic_overthinking_teacher_writes_long_cot_for_every_reasoning_domain():
    from widen_dag.domains import math as math_domain

    arith = distill.synthetic_rows(_staged("arithmetic", "Ann has 3 apples.", "7", json.dumps({"steps": ["3 + 4 = 7"]})), 4, 0)
    assert arith[0]["messages"][1]["content"].endswith("The answer is \\boxed{7}.")
    math = distill.synthetic_rows(_staged("math", "Tom has 3 pens. He buys 4 more. How many pens?", "7"), 4, 0)
    text = math[0]["messages"][1]["content"]
    assert math_domain.verify(text, "7").correct and any(h in text for h in distill.HABITS)
    instance, plan = blocksworld.generate(1, 3, seed=1)[0]
    bw = distill.synthetic_rows(_staged("blocksworld", instance.statement(), "\n".join(map(str, plan))), 4, 0)
    text = bw[0]["messages"][1]["content"]
    assert blocksworld.verify(text, "", instance.statement()).correct and any(h in text for h in distill.HABITS)


def test_the_synthetic_teacher_leaves_instruction_following_out_and_counts_it():
    # As real long-CoT exports: the distilled student meets Multi-IF / IFEval only at evaluation.
    gold = '{"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}'
    mixed = pl.concat(
        [
            _staged("math", "Tom has 3 pens. He buys 4 more. How many pens?", "7"),
            _staged("instruction_following", "Write a haiku. Do not use any commas.", gold).with_columns(problem_id=pl.lit("p2")),
        ]
    )
    rows = distill.synthetic_rows(mixed, 4, 0)
    assert [r["problem_id"] for r in rows] == ["p1"]
    assert distill.not_distilled(mixed) == {"instruction_following": 1}
    with pytest.raises(ValueError, match="no train problem to write for.*instruction_following"):
        distill.synthetic_rows(mixed.filter(pl.col("domain") == "instruction_following"), 4, 0)


def test_a_missing_long_cot_file_is_one_error_saying_what_to_set(tmp_path):
    with pytest.raises(ValueError, match="set data.distill.path"):
        distill.file_rows(None, "question", "response", str)
    with pytest.raises(FileNotFoundError, match=r"does not exist; set data.distill.path .* or data.distill.source: synthetic"):
        distill.file_rows(str(tmp_path / "missing.jsonl"), "question", "response", str)


def test_policy_and_critic_engines_must_fit_one_gpu_together():
    base = load_profile("qwen2_5_1_5b_math").model_dump()
    assert base["models"]["policy"]["gpu_memory_utilization"] + base["models"]["critic"]["gpu_memory_utilization"] <= 0.95
    base["models"]["policy"].pop("gpu_memory_utilization")
    base["models"]["critic"].pop("gpu_memory_utilization")
    base["generation"]["gpu_memory_utilization"] = 0.85  # both engines would take the profile-wide share
    with pytest.raises(ValueError, match="models.critic.gpu_memory_utilization"):
        Profile.model_validate(base)


def test_per_model_memory_settings_reach_each_engine(monkeypatch):
    from widen_dag import llm

    seen = []
    monkeypatch.setattr(llm, "create_backend", lambda name, model, **kw: seen.append((model, kw)) or object())
    profile = load_profile("qwen2_5_1_5b_math")
    from widen_dag.storage.artifacts import ModelLocation

    llm.backend_from_profile(profile.generation, ModelLocation("p", source="hub"), 0, memory=profile.models.policy)
    llm.backend_from_profile(profile.generation, ModelLocation("c", source="hub"), 0, memory=profile.models.critic)
    assert [kw["gpu_memory_utilization"] for _, kw in seen] == [0.3, 0.6]
