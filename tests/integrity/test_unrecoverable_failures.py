"""#21 item 4: failures no retry can fix fail once, with the cause and the fix in one line."""

from __future__ import annotations

import dagster as dg

from widen_dag.cli import failed_steps
from widen_dag.defs.assets.models import policy_model
from widen_dag.defs.resources import PipelineResource
from widen_dag.launch.failures import classify


def _profile(tmp_path, body: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text("extends: tiny\nname: broken\n" + body)
    return str(path)


def _run(tmp_path, profile: str, instance):
    res = {
        "pipeline": PipelineResource(profile=profile, lake_root=str(tmp_path / "lake")),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    return dg.materialize([policy_model], resources=res, instance=instance, raise_on_error=False)


def _retries(result) -> int:
    return sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_a_missing_local_model_fails_policy_model_once_with_the_fix(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = _run(tmp_path, _profile(tmp_path, f"models:\n  policy: {{source: path, name: {tmp_path}/nowhere}}\n"), instance)
    assert not result.success and _retries(result) == 0
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    assert failure.user_failure_data.metadata["retryable"].value is False
    assert "does not exist" in failure.user_failure_data.metadata["cause"].value
    [line] = failed_steps(instance, result.run_id)
    assert line.startswith("policy_model: policy model: models.policy: model folder") and "Fix: point models.policy.name" in line


def test_no_cuda_device_in_a_worker_fails_once_with_the_profile_field_to_change(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = _run(tmp_path, _profile(tmp_path, "train: {device: cuda}\n"), instance)  # this machine has no GPU
    assert not result.success and _retries(result) == 0
    [line] = failed_steps(instance, result.run_id)
    assert "no CUDA device" in line and "Fix: set generation.device: cpu and train.device: cpu" in line


def test_hub_errors_are_classified_as_unrecoverable_and_ordinary_crashes_are_not():
    class RepositoryNotFoundError(Exception):
        pass

    assert "HF_TOKEN" in classify(RepositoryNotFoundError("404 Client Error: Repository Not Found for url"))[1]
    wrapped = RuntimeError("load failed")
    wrapped.__cause__ = OSError("We couldn't connect to 'https://huggingface.co' to load the files (connection refused)")
    assert "HF_HUB_OFFLINE=1" in classify(wrapped)[1]
    assert classify(RuntimeError("worker killed by signal 9")) is None


def test_a_hub_model_missing_from_the_offline_cache_is_refused_with_the_fix(tmp_path, monkeypatch):
    from widen_dag.launch.failures import Unrecoverable
    from widen_dag.storage.artifacts import ModelLocation, check_model_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    try:
        check_model_available(ModelLocation("someone/no-such-model-21", source="hub"), "models.policy")
    except Unrecoverable as err:
        assert "not in the local HF cache" in err.cause and "hf download someone/no-such-model-21" in err.fix
    else:
        raise AssertionError("an uncached hub model passed the offline check")
