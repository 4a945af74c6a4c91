"""The Kubernetes worker image and the pod's command: the repo's Dockerfile agrees with the pod
spec, and a pod's exact command runs a worker from another working directory and install."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from widen_dag.defs.assets.environment import compute_environment
from widen_dag.defs.resources import PipelineResource
from widen_dag.launch import scaleout
from widen_dag.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]
K8S = "llama3_1_8b_planning_k8s"


def _dockerfile() -> dict[str, list[str]]:
    """Each instruction's arguments (continuation lines joined), in order, by instruction."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_the_dockerfile_builds_the_user_paths_and_volumes_the_pod_spec_uses():
    profile = load_profile(K8S)
    spec = scaleout.pod_spec(profile, "train")
    container = spec["containers"][0]
    image = _dockerfile()
    assert image["FROM"][0].startswith("nvidia/cuda:")
    assert any('"/src[gpu,k8s]"' in run for run in image["RUN"])  # the extras the pods need
    user, group = image["USER"][-1].split(":")
    security = spec["securityContext"]
    assert (int(user), int(group)) == (security["runAsUser"], security["runAsGroup"]) == (1000, 1000)
    assert int(user) != 0 and security["runAsNonRoot"] is True and security["fsGroup"] == int(group)
    assert image["WORKDIR"][-1] == container["workingDir"]
    env = dict(kv.split("=", 1) for instruction in image["ENV"] for kv in shlex.split(instruction))
    pod_env = scaleout.pod_env(profile)
    for name in ("HOME", "HF_HOME", "WIDEN_DAG_CACHE"):
        assert env[name] == pod_env[name], name
    volumes = set(json.loads(image["VOLUME"][-1]))
    mounted = {m["mountPath"] for m in container["volumeMounts"]} - {"/dev/shm"}
    assert volumes == mounted == set(scaleout.CACHE_MOUNTS.values())
    # the image creates and hands each cache folder and the workdir to that user
    setup = next(run for run in image["RUN"] if "useradd" in run)
    assert f"--uid {user}" in setup and f"chown -R {user}:{group}" in setup
    assert all(path in setup for path in [*volumes, container["workingDir"]] if path != "/cache/widen_dag")


class _LocalKubelet:
    """The cluster, for one test: ``create_namespaced_pod`` runs the pod's first container as a
    local process (its command and env as Kubernetes would give them; container paths of the
    volumes, the home and the working directory mapped onto folders of this test), and the logs
    it wrote are what dagster-k8s's log reader gets, as from a real pod."""

    def __init__(self, root: Path, install: Path) -> None:
        self.root, self.install = root, install
        self.core_api = self
        self.pods: dict[str, subprocess.CompletedProcess] = {}
        self.commands: list[list[str]] = []

    def production_client(self) -> _LocalKubelet:  # stands in for DagsterKubernetesClient
        return self

    def _host_path(self, container_path: str) -> str:
        return str(self.root / container_path.strip("/").replace("/", "_"))

    def create_namespaced_pod(self, namespace: str, body) -> None:
        container = body.spec.containers[0]
        mounted = {m.mount_path for m in container.volume_mounts} | {container.working_dir}
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",  # `python` is the image's, on PATH
            "PYTHONPATH": str(self.install),  # the image's install of the package, not this checkout
        }
        for var in container.env:
            if var.value_from is not None:
                continue  # secrets: none in this cluster
            env[var.name] = self._host_path(var.value) if var.value in mounted or var.name == "HOME" else var.value
        for path in [*mounted, scaleout.CONTAINER_HOME]:
            os.makedirs(self._host_path(path), exist_ok=True)
        argv = [*container.command, *(container.args or [])]
        self.commands.append(argv)
        self.pods[body.metadata.name] = subprocess.run(
            argv, env=env, cwd=self._host_path(container.working_dir), capture_output=True, text=True, timeout=300
        )

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs):
        done = self.pods[name]
        lines = (done.stdout + done.stderr).splitlines()  # each with its own timestamp, as the kubelet writes them
        return [f"2026-01-01T00:00:{i // 10**6:02d}.{i % 10**6:06d}Z {line}\n".encode() for i, line in enumerate(lines)]

    def wait_for_pod(self, name: str, namespace: str, **kwargs) -> None:
        done = self.pods[name]
        if done.returncode != 0:
            raise RuntimeError(f"pod {name} failed with code {done.returncode}: {done.stderr[-3000:]}")

    def delete_namespaced_pod(self, name: str, namespace: str) -> None:
        pass


@pytest.mark.slow
def test_a_pods_exact_command_runs_its_worker_from_another_directory_and_install(tmp_path, monkeypatch):
    """What PipesK8sClient gives the container (command, env, Pipes bootstrap) runs end to end with
    the package installed elsewhere and a working directory that is not this checkout; the worker
    reports back through the pod's logs, and Dagster reads the lake the pod was given."""
    import dagster_k8s.pipes

    install = tmp_path / "site"
    shutil.copytree(REPO / "widen_dag", install / "widen_dag", ignore=shutil.ignore_patterns("__pycache__"))
    lake = f"file://{tmp_path / 'lake'}"
    profile = tmp_path / "k8s_tiny.yaml"
    profile.write_text(
        f"extends: tiny\nname: k8s_tiny\nruntime:\n  kind: k8s\n  k8s: {{image: widen-dag:test, lake_root: '{lake}'}}\n"
    )
    kubelet = _LocalKubelet(tmp_path / "pod", install)
    monkeypatch.setattr(dagster_k8s.pipes, "DagsterKubernetesClient", kubelet)
    monkeypatch.setattr(dagster_k8s.pipes.PipesK8sClient, "_load_k8s_config", lambda self: None)
    monkeypatch.delenv("WIDEN_DAG_LAKE", raising=False)
    pipeline = PipelineResource(profile=str(profile))
    res = {"pipeline": pipeline, "pipes_subprocess_client": dg.PipesSubprocessClient()}
    result = dg.materialize([compute_environment], resources=res, raise_on_error=False)
    pod_errors = [p.stderr[-2000:] for p in kubelet.pods.values() if p.returncode]
    assert result.success, pod_errors
    assert kubelet.commands == [["python", "-m", "widen_dag.workers.environment"]]
    metadata = result.asset_materializations_for_node("compute_environment")[0].metadata
    assert metadata["device"].value == "cpu" and metadata["torch"].value  # reported from inside the pod
    # the worker ran from the copy (its bytecode is there), not from this checkout
    assert list((install / "widen_dag" / "workers" / "__pycache__").glob("environment.*.pyc"))
    assert pipeline.lake().root == lake  # Dagster's lake is the pods'

    # A training pod names its accelerate config; the launcher finds it in the install it runs from.
    train = load_profile(K8S)
    command = scaleout.worker_argv(
        "train", "sft", num_processes=4, python="python", accelerate_flags=scaleout.accelerate_args(train, "train")
    )
    launcher_args = command[command.index("widen_dag.launch.accelerate_launch") + 1 :]
    resolved = subprocess.run(
        [
            "python",
            "-c",
            "import sys; from widen_dag.launch.accelerate_launch import resolve_config_file as r; print(r(sys.argv[1:])[1])",
            *launcher_args,
        ],
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(install)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert resolved.stdout.strip() == str(install / "widen_dag" / "launch" / "accelerate" / "fsdp.yaml")
