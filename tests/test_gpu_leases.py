"""The GPU node used whole: pool `gpu` sized to the node's GPUs, each local worker handed the
GPU ids it owns (fake ids on this CPU machine: only the bookkeeping is under test)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading

import dagster as dg
import pytest

from widen_dag.defs.assets.environment import compute_environment
from widen_dag.defs.resources import PipelineResource
from widen_dag.launch import scaleout
from widen_dag.launch.gpus import GpuLeaseError, gpu_lease, node_gpu_ids, pool_limit
from widen_dag.profiles import load_profile, parse_profile


class _WouldWait(Exception):
    pass


def _refuse_to_wait(message: str) -> None:
    raise _WouldWait(message)


def test_concurrent_leases_own_disjoint_gpus_and_a_third_waits_for_a_release(tmp_path):
    ids = ["0", "1"]
    with contextlib.ExitStack() as holding_first, gpu_lease(1, ids, lock_dir=tmp_path) as second:
        first = holding_first.enter_context(gpu_lease(1, ids, lock_dir=tmp_path))
        assert sorted(first + second) == ids
        waiting, got = threading.Event(), []

        def third() -> None:
            with gpu_lease(1, ids, lock_dir=tmp_path, poll_s=0.05, on_wait=lambda _: waiting.set()) as mine:
                got.extend(mine)

        thread = threading.Thread(target=third)
        thread.start()
        assert waiting.wait(timeout=60) and not got
        holding_first.close()  # the first worker ends: the waiting one takes its GPU
        thread.join(timeout=60)
        assert got == first
    with gpu_lease(2, ids, lock_dir=tmp_path, on_wait=_refuse_to_wait) as both:  # nothing is left held
        assert both == ids
    with pytest.raises(GpuLeaseError, match="needs 3 GPUs, this node has 2"), gpu_lease(3, ids, lock_dir=tmp_path):
        pass


def test_a_killed_holder_frees_its_gpus(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from widen_dag.launch.gpus import gpu_lease\n"
            f"with gpu_lease(1, ['7'], lock_dir=pathlib.Path({str(tmp_path)!r})) as ids:\n"
            "    print(ids[0], flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "7"
        with pytest.raises(_WouldWait), gpu_lease(1, ["7"], lock_dir=tmp_path, on_wait=_refuse_to_wait):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with gpu_lease(1, ["7"], lock_dir=tmp_path, on_wait=_refuse_to_wait) as ids:
            assert ids == ["7"]
    finally:
        holder.kill()


def test_the_pool_holds_as_many_workers_as_the_nodes_gpus_fit(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert node_gpu_ids() == [str(i) for i in range(8)]
    assert node_gpu_ids(2) == ["0", "1"]
    with pytest.raises(GpuLeaseError, match="runtime.gpus_per_node=9"):
        node_gpu_ids(9)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert node_gpu_ids() == [] and pool_limit(0, 4) == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    k8s = load_profile("llama3_1_8b_planning_k8s").model_dump()
    k8s["runtime"]["gpus_per_node"] = 8
    assert scaleout.gpu_pool_limit(parse_profile(k8s)) == 2  # search pods use TP 2 x DP 2
    tiny = load_profile("tiny").model_dump()
    tiny["runtime"]["gpus_per_node"] = 8
    assert scaleout.gpu_pool_limit(parse_profile(tiny)) == 8
    # `widen-dag init-home` writes the limit into the instance's pool settings
    from widen_dag.cli import init_home

    profile = tmp_path / "eight.yaml"
    profile.write_text("extends: tiny\nname: eight\nruntime: {gpus_per_node: 8}\n")
    monkeypatch.setenv("WIDEN_DAG_PROFILE", str(profile))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    config = (init_home() / "dagster.yaml").read_text()
    assert "default_limit: 8" in config and "default_limit: 1" not in config


# A stand-in worker: reports the CUDA_VISIBLE_DEVICES it was started with, through Pipes.
_REPORT_GPUS = (
    "import os\nfrom dagster_pipes import open_dagster_pipes\n"
    "with open_dagster_pipes() as pipes:\n"
    "    pipes.report_asset_materialization(metadata={'gpus': os.environ.get('CUDA_VISIBLE_DEVICES', '')})\n"
)


class _BothAtOnce(dg.PipesSubprocessClient):
    """Starts its worker only once the other launch also holds its GPUs: the two run side by side."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self._barrier = barrier

    def run(self, *, command, context, extras=None, env=None, **kwargs):
        self._barrier.wait(timeout=120)
        return super().run(command=[sys.executable, "-c", _REPORT_GPUS], context=context, extras=extras, env=env)


def test_two_workers_launched_together_get_disjoint_cuda_visible_devices(tmp_path, monkeypatch):
    """Before: every local worker inherited the whole node (or none), pool `gpu` ran one at a time."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the Dagster host's two (fake) GPUs
    monkeypatch.setenv("WIDEN_DAG_GPU_LOCKS", str(tmp_path / "locks"))
    barrier = threading.Barrier(2)
    results: list[dg.ExecuteInProcessResult] = []

    def launch(i: int) -> None:
        res = {
            "pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path / f"lake{i}")),
            "pipes_subprocess_client": _BothAtOnce(barrier),
        }
        results.append(dg.materialize([compute_environment], resources=res, raise_on_error=False))

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 2 and all(r.success for r in results)
    owned = [r.asset_materializations_for_node("compute_environment")[0].metadata["gpus"].value for r in results]
    assert sorted(owned) == ["0", "1"]


@pytest.mark.parametrize("lease", ["gpu", "cpu"])
def test_a_lease_folder_others_can_write_is_refused_with_what_to_do(tmp_path, lease):
    from widen_dag.launch.cpus import cpu_lease

    shared = tmp_path / "locks"
    shared.mkdir()
    shared.chmod(0o777)  # as a folder another user made in a shared /tmp could be
    take = gpu_lease(1, ["0"], lock_dir=shared) if lease == "gpu" else cpu_lease(whole_node=True, lock_dir=shared)
    with pytest.raises(PermissionError, match=f"{lease.upper()} lease folder .* writable by others: remove it, or set"), take:
        pass
    assert not any(shared.iterdir())  # nothing was locked there
