"""Scale-out: worker commands, the Kubernetes profile's pod specs, and the k8s launch path."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from widen_dag.defs.assets.environment import compute_environment
from widen_dag.defs.resources import PipelineResource
from widen_dag.launch import scaleout
from widen_dag.profiles import ProfileError, load_profile, parse_profile, profile_from_json

K8S = "llama3_1_8b_planning_k8s"


def test_multi_gpu_training_workers_run_under_accelerate_launch():
    assert scaleout.worker_argv("train", "sft")[1:] == ["-m", "widen_dag.workers.train", "sft"]
    cmd = scaleout.worker_argv("train", "dpo", "cdpo", num_processes=4, python="python")
    assert cmd == [
        "python",
        "-m",
        "widen_dag.launch.accelerate_launch",
        "--num_processes",
        "4",
        "-m",
        "widen_dag.workers.train",
        "dpo",
        "cdpo",
    ]


def test_k8s_profile_extends_the_planning_profile_and_overrides_only_what_it_names():
    base, k8s = load_profile("llama3_1_8b_planning"), load_profile(K8S)
    assert base.runtime.kind == "local" and k8s.runtime.kind == "k8s"
    assert k8s.datasets == base.datasets and k8s.train.sft == base.train.sft
    assert (k8s.generation.tensor_parallel_size, k8s.generation.data_parallel_size) == (2, 2)
    assert k8s.generation.max_model_len == base.generation.max_model_len  # merged, not replaced
    assert k8s.runtime.k8s.lake_root.startswith("s3://")


@pytest.mark.parametrize(("module", "gpus"), [("search", 4), ("evaluate", 4), ("train", 4), ("environment", 1), ("models", 0)])
def test_pod_specs_ask_for_the_gpus_each_stage_uses(module, gpus):
    profile = load_profile(K8S)
    spec = scaleout.pod_spec(profile, module)
    container = spec["containers"][0]
    limits = container["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert ("nodeSelector" in spec) == bool(gpus) and ("tolerations" in spec) == bool(gpus)
    assert spec["restartPolicy"] == "Never"
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory" and {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_secrets_reach_pods_only_as_secret_key_refs():
    profile = load_profile(K8S)
    env = scaleout.pod_spec(profile, "search")["containers"][0]["env"]
    assert {e["name"] for e in env} == {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(set(e) == {"name", "valueFrom"} and "secretKeyRef" in e["valueFrom"] for e in env)
    plain = scaleout.pod_env(profile)
    assert plain == {
        "WIDEN_DAG_PROFILE": K8S,
        "WIDEN_DAG_LAKE": "s3://example-bucket/widen-dag/lake",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": "/home/widen",
        "HF_HOME": "/cache/huggingface",
        "WIDEN_DAG_CACHE": "/cache/widen_dag",
    }


def test_dagster_k8s_builds_a_valid_pod_from_the_spec_and_command():
    from dagster_k8s.pipes import build_pod_body

    profile = load_profile(K8S)
    command = scaleout.worker_argv("train", "sft", num_processes=scaleout.training_processes(profile, "train"), python="python")
    pod = build_pod_body(
        "widen-dag-train-sft", None, command, scaleout.pod_env(profile), None, scaleout.pod_spec(profile, "train")
    )
    container = pod.spec.containers[0]
    assert container.image == "ghcr.io/example/widen-dag:latest"
    assert container.command[:5] == ["python", "-m", "widen_dag.launch.accelerate_launch", "--num_processes", "4"]
    assert container.resources.limits["nvidia.com/gpu"] == "4"
    assert pod.spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod.spec.volumes[0].empty_dir.medium == "Memory"
    env = {e.name: e for e in container.env}
    assert env["WIDEN_DAG_LAKE"].value.startswith("s3://") and env["HF_TOKEN"].value_from.secret_key_ref.name == "hf-token"


def test_a_k8s_profile_launches_workers_through_pipes_k8s_client(tmp_path, monkeypatch):
    import dagster_k8s

    calls = []

    class RecordingK8sClient:
        def run(self, **kwargs):
            calls.append(kwargs)
            raise RuntimeError("no cluster in tests")

    monkeypatch.setattr(dagster_k8s, "PipesK8sClient", RecordingK8sClient)
    monkeypatch.delenv("WIDEN_DAG_LAKE", raising=False)  # Dagster's lake is then the pods' lake
    res = {"pipeline": PipelineResource(profile=K8S), "pipes_subprocess_client": dg.PipesSubprocessClient()}
    result = dg.materialize([compute_environment], resources=res, raise_on_error=False)
    assert not result.success and len(calls) == 2  # the asset's retry policy ran it twice
    call = calls[0]
    assert call["namespace"] == "widen-dag" and call["command"] == ["python", "-m", "widen_dag.workers.environment"]
    assert call["base_pod_spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # the pod gets the resolved profile itself: a YAML file on this machine would not exist there
    assert profile_from_json(call["extras"]["profile_json"]) == load_profile(K8S)
    assert call["extras"]["lake_root"] == "s3://example-bucket/widen-dag/lake" == res["pipeline"].lake().root


def test_a_pod_lake_that_dagster_does_not_read_is_refused_before_any_stage(tmp_path, monkeypatch):
    """Before: the pods got runtime.k8s.lake_root while Dagster read $WIDEN_DAG_LAKE (search
    pods then could not find stg_problems). Now one lake, or one clear error naming the field."""
    import dagster_k8s

    launched = []
    monkeypatch.setattr(dagster_k8s, "PipesK8sClient", lambda: launched.append(1))
    monkeypatch.setenv("WIDEN_DAG_LAKE", str(tmp_path / "lake"))
    pipeline = PipelineResource(profile=K8S)
    with pytest.raises(ProfileError, match=r"runtime.k8s.lake_root: the pods would use s3://example-bucket.*\$WIDEN_DAG_LAKE"):
        pipeline.load_profile()
    res = {"pipeline": pipeline, "pipes_subprocess_client": dg.PipesSubprocessClient()}
    result = dg.materialize([compute_environment], resources=res, raise_on_error=False)
    assert not result.success and launched == []
    # the same URI (a trailing slash aside) is one lake
    monkeypatch.setenv("WIDEN_DAG_LAKE", "s3://example-bucket/widen-dag/lake/")
    assert pipeline.worker_extras(pipeline.load_profile())["lake_root"] == "s3://example-bucket/widen-dag/lake"


def test_pods_run_as_the_images_non_root_user_with_cache_volumes():
    profile = load_profile(K8S)
    spec = scaleout.pod_spec(profile, "train")
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    env = scaleout.pod_env(profile)
    assert volumes[mounts[env["HF_HOME"]]] == {"name": "model-cache", "emptyDir": {}}
    assert volumes[mounts[env["WIDEN_DAG_CACHE"]]] == {"name": "checkpoint-cache", "emptyDir": {}}
    assert volumes[mounts[env["WIDEN_DAG_CACHE"] + "/trainer_state"]]["name"] == "trainer-state"
    claimed = parse_profile(
        {
            **profile.model_dump(),
            "runtime": {
                **profile.runtime.model_dump(),
                "k8s": {**profile.runtime.k8s.model_dump(), "volume_claims": {"model_cache": "hf-models"}},
            },
        }
    )
    claimed_volumes = {v["name"]: v for v in scaleout.pod_spec(claimed, "search")["volumes"]}
    assert claimed_volumes["model-cache"] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-models"}}
    assert claimed_volumes["trainer-state"] == {"name": "trainer-state", "emptyDir": {}}
    with pytest.raises(ProfileError, match="volume_claims"):
        parse_profile(
            {
                **profile.model_dump(),
                "runtime": {
                    **profile.runtime.model_dump(),
                    "k8s": {**profile.runtime.k8s.model_dump(), "volume_claims": {"x": "y"}},
                },
            }
        )


def test_a_training_pods_command_names_its_accelerate_config_not_a_path_of_this_machine():
    """Before: --config_file was the absolute path of the config in the Dagster host's install."""
    profile = load_profile(K8S)
    command = scaleout.worker_argv(
        "train", "sft", num_processes=4, python="python", accelerate_flags=scaleout.accelerate_args(profile, "train")
    )
    assert command[command.index("--config_file") + 1] == "fsdp"
    assert not any("/" in arg for arg in command)
    from widen_dag.launch.accelerate_launch import resolve_config_file

    resolved = resolve_config_file(command[3:])
    assert resolved[resolved.index("--config_file") + 1] == str(scaleout.accelerate_config_file("fsdp"))
    assert resolved[resolved.index("-m") :] == ["-m", "widen_dag.workers.train", "sft"]  # the worker's own args untouched


def _with_runtime(runtime: dict) -> dict:
    return {
        "name": "x",
        "datasets": [{"name": "a", "domain": "arithmetic", "source": {"kind": "arithmetic"}}],
        "runtime": runtime,
    }


def test_k8s_runtime_errors_name_the_field():
    with pytest.raises(ProfileError, match="needs a runtime.k8s section"):
        parse_profile(_with_runtime({"kind": "k8s"}))
    with pytest.raises(ProfileError, match=r"runtime.k8s.secret_env.*'<secret name>/<key>'"):
        parse_profile(
            _with_runtime({"kind": "k8s", "k8s": {"image": "i", "lake_root": "s3://b", "secret_env": {"HF_TOKEN": "hf_abc"}}})
        )
    with pytest.raises(ProfileError, match="runtime.k8s.lake_root"):
        parse_profile(_with_runtime({"kind": "k8s", "k8s": {"image": "i", "lake_root": "/local/path"}}))


def test_extends_cycles_are_refused(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(json.dumps({"extends": str(b), "name": "a"}))
    b.write_text(json.dumps({"extends": str(a), "name": "b"}))
    with pytest.raises(ProfileError, match="'extends' cycle"):
        load_profile(str(a))


@pytest.mark.parametrize("exit_code_in_message", [True, False], ids=["exit-code", "clock-only"])
def test_a_hung_worker_is_stopped_at_its_timeout_retried_and_reported(tmp_path, monkeypatch, exit_code_in_message):
    if not exit_code_in_message:  # a Dagster that words its error differently: the clock still tells
        monkeypatch.setattr(scaleout, "TIMEOUT_EXIT_CODE", 99999)
    profile = tmp_path / "hung.yaml"
    profile.write_text("extends: tiny\nname: hung\nruntime: {worker_timeout_s: 1}\n")
    res = {
        "pipeline": PipelineResource(profile=str(profile), lake_root=str(tmp_path / "lake")),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([compute_environment], resources=res, instance=instance, raise_on_error=False)
    assert not result.success
    events = instance.all_logs(result.run_id)
    assert sum(e.dagster_event is not None and e.dagster_event.event_type_value == "STEP_RESTARTED" for e in events) == 1
    failure = next(e for e in events if e.dagster_event is not None and e.dagster_event.event_type_value == "STEP_FAILURE")
    assert "ran past runtime.worker_timeout_s=1s and was stopped" in str(failure.dagster_event.event_specific_data.error)


def test_worker_commands_run_under_a_timeout_and_pods_carry_a_deadline():
    argv = scaleout.worker_argv("search", "s-000", timeout_s=3600, python="python")
    assert argv == ["timeout", "--signal=TERM", "--kill-after=60", "3600", "python", "-m", "widen_dag.workers.search", "s-000"]
    assert scaleout.pod_spec(load_profile(K8S), "search")["activeDeadlineSeconds"] == 48 * 3600
