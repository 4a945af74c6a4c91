from __future__ import annotations

import pytest

from widen_dag.profiles import ProfileError, available_profiles, load_profile, parse_profile

BASE = {"name": "t", "datasets": [{"name": "a", "domain": "arithmetic", "source": {"kind": "arithmetic"}}]}


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_loads(name):
    profile = load_profile(name)
    assert profile.name == name and profile.shard_keys()


def test_tiny_is_the_default_and_env_var_selects(monkeypatch):
    monkeypatch.delenv("WIDEN_DAG_PROFILE", raising=False)
    assert load_profile().name == "tiny"
    monkeypatch.setenv("WIDEN_DAG_PROFILE", "qwen2_5_1_5b_math")
    assert load_profile().name == "qwen2_5_1_5b_math"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"serach": {}}, "serach: Extra inputs are not permitted"),
        ({"search": {"rollouts": "many"}}, "search.rollouts: Input should be a valid integer"),
        ({"search": {"k_min": 9, "k_max": 4}}, "search: Value error, k_min (9) must not exceed k_max (4)"),
        ({"generation": {"backend": "tgi"}}, "generation.backend: Input should be 'vllm' or 'transformers'"),
        ({"generation": {"temperature": -1}}, "generation.temperature: Input should be greater than or equal to 0"),
        ({"models": {"policy": {"source": "hub"}}}, "models.policy: Value error, a hub model needs 'name'"),
        (
            {"datasets": [{"name": "a", "domain": "math", "source": {"kind": "file", "path": "x", "qestion_field": "q"}}]},
            "datasets.0.source.qestion_field: Extra inputs are not permitted",
        ),
        ({"data": {"duckdb": {"memory_limit": "lots"}}}, "data.duckdb.memory_limit: String should match pattern"),
        ({"data": {"duckdb": {"batch_rows": 0}}}, "data.duckdb.batch_rows: Input should be greater than 0"),
        (
            {"train": {"dpo": {"variants": {"dpo": {}}}}, "eval": {"mcts_decode": {"variants": ["sft", "joint_masked"]}}},
            "eval.mcts_decode.variants: joint_masked is not an ablation row; choose from base, distill_baseline, sft, dpo",
        ),
    ],
)
def test_bad_profiles_fail_with_the_dotted_field(patch, message):
    with pytest.raises(ProfileError) as err:
        parse_profile({**BASE, **patch}, "test.yaml")
    assert message in str(err.value)
    assert "test.yaml" in str(err.value)


def test_unknown_profile_name_lists_the_choices():
    with pytest.raises(ProfileError, match="no profile 'tinny': choose one of .*tiny"):
        load_profile("tinny")


def test_yaml_path_and_bad_yaml(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\ndatasets:\n  - {name: a, domain: arithmetic, source: {kind: arithmetic}}\n")
    assert load_profile(str(good)).name == "mine"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(bad))


def test_every_profile_setting_is_described_and_explained():
    from pydantic import BaseModel

    from widen_dag.profiles import Profile, explain

    def undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if not field.description:
                out.append(prefix + name)
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg is not model:
                    out += undescribed(arg, f"{prefix}{name}.")
        return out

    assert undescribed(Profile) == []
    lines = explain()
    assert any(line.startswith("train.dpo.beta = 0.1: ") for line in lines)
    assert any(line.startswith("search.rollouts = 32: ") for line in lines)


def test_the_resolved_profile_round_trips_through_json_unchanged():
    from widen_dag.profiles import profile_from_json, profile_to_json

    for name in available_profiles():
        profile = load_profile(name)
        assert profile_from_json(profile_to_json(profile)) == profile
