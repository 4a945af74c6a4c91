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
        (
            {"train": {"num_processes": 2, "dpo": {"precompute_ref_log_probs": True}}},
            "train: Value error, train.dpo.precompute_ref_log_probs needs train.num_processes: 1 (got 2)",
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


def test_a_child_profile_naming_another_model_does_not_inherit_the_parents_model_settings(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text(
        "extends: qwen2_5_1_5b_math\nname: mine\n"
        "models:\n"
        "  policy: {source: path, name: /models/my-model, gpu_memory_utilization: 0.25}\n"
        "  student: {source: hub, name: Qwen/Qwen2.5-1.5B-Instruct, revision: abc123}\n"
    )
    profile = load_profile(str(child))
    parent = load_profile("qwen2_5_1_5b_math")
    # Another model: the parent's config_file and GPU share (the 1.5B's) would size the wrong model.
    assert parent.models.policy.config_file and parent.models.policy.gpu_memory_utilization == 0.3
    assert profile.models.policy.config_file is None and profile.models.policy.gpu_memory_utilization == 0.25
    # The same model named again: the parent's settings for it still apply.
    assert profile.models.student.config_file == parent.models.student.config_file
    assert profile.models.student.revision == "abc123"
    assert profile.models.critic == parent.models.critic


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"source": "gguf"}, "a gguf model needs 'name': the .gguf file"),
        ({"source": "gguf", "name": "model.bin"}, "a gguf model needs 'name': the .gguf file"),
        ({"source": "path", "name": "/m", "package": "x"}, "'package' is for source: gguf only"),
    ],
)
def test_gguf_model_settings_are_checked_at_load(ref, message):
    with pytest.raises(ProfileError, match=message):
        parse_profile({**BASE, "models": {"policy": ref}}, "test.yaml")


def test_a_child_profiles_dpo_variants_are_the_rows_it_lists(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text(
        "name: parent\ndatasets:\n  - {name: a, domain: arithmetic, source: {kind: arithmetic}}\n"
        "train:\n  dpo:\n    variants: {dpo: {}, cdpo: {balanced: true, label_smoothing: 0.1}}\n"
        "eval: {mcts_decode: {variants: [sft]}}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {parent}\nname: child\ntrain:\n  dpo:\n    beta: 0.2\n    variants: {{dpo: {{}}}}\n")
    profile = load_profile(str(child))
    assert list(profile.train.dpo.variants) == ["dpo"] and profile.train.dpo.beta == 0.2
