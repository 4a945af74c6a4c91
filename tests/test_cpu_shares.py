"""A GPU-less machine shared by its workers: training workers side by side split the cores step
by step, a whole-node worker (vLLM, evaluation) waits until it is alone."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading

import dagster as dg
import pytest

from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import GPU_POOL, SHARED_CORES_POOL, run_worker
from widen_dag.launch import cpus, scaleout
from widen_dag.launch.cpus import SHARE_CORES_ENV, SHARE_DIR_ENV, ThreadShare, cpu_lease, sharing_workers
from widen_dag.profiles import load_profile


class _WouldWait(Exception):
    pass


def _refuse_to_wait(message: str) -> None:
    raise _WouldWait(message)


def _wait_in_thread(**lease_kwargs) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A lease taken in a thread: (thread, it reported waiting, it got the lease)."""
    waiting, got = threading.Event(), threading.Event()

    def take() -> None:
        with cpu_lease(poll_s=0.05, on_wait=lambda _: waiting.set(), **lease_kwargs):
            got.set()

    thread = threading.Thread(target=take)
    thread.start()
    return thread, waiting, got


def test_sharing_workers_are_counted_and_a_whole_node_worker_waits_until_they_are_done(tmp_path):
    with contextlib.ExitStack() as first:
        first.enter_context(cpu_lease(whole_node=False, lock_dir=tmp_path, on_wait=_refuse_to_wait))
        with cpu_lease(whole_node=False, lock_dir=tmp_path, on_wait=_refuse_to_wait):
            assert sharing_workers(tmp_path) == 2
            thread, waiting, got = _wait_in_thread(whole_node=True, lock_dir=tmp_path)
            assert waiting.wait(timeout=60) and not got.is_set()
        assert sharing_workers(tmp_path) == 1 and not got.is_set()
        first.close()
        thread.join(timeout=60)
        assert got.is_set()
    assert sharing_workers(tmp_path) == 0


def test_a_sharing_worker_waits_while_a_whole_node_worker_runs(tmp_path):
    with cpu_lease(whole_node=True, lock_dir=tmp_path, on_wait=_refuse_to_wait):
        thread, waiting, got = _wait_in_thread(whole_node=False, lock_dir=tmp_path)
        assert waiting.wait(timeout=60) and not got.is_set()
    thread.join(timeout=60)
    assert got.is_set()


def test_a_killed_sharing_worker_stops_counting_and_frees_the_node(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from widen_dag.launch.cpus import cpu_lease\n"
            f"with cpu_lease(whole_node=False, lock_dir=pathlib.Path({str(tmp_path)!r})):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sharing_workers(tmp_path) == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert sharing_workers(tmp_path) == 0  # its lease file is stale: removed, not counted
        assert not list(tmp_path.glob("share-*.lock"))
        with cpu_lease(whole_node=True, lock_dir=tmp_path, on_wait=_refuse_to_wait):
            pass
    finally:
        holder.kill()


def test_a_sharing_worker_takes_its_part_of_the_cores_and_all_of_them_once_alone(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv(SHARE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(SHARE_CORES_ENV, "4")
    before = torch.get_num_threads()
    share = ThreadShare(every_s=0.0)
    try:
        with cpu_lease(whole_node=False, lock_dir=tmp_path):
            with cpu_lease(whole_node=False, lock_dir=tmp_path):
                share.rebalance()
                assert torch.get_num_threads() == 2
            share.rebalance()
            assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_a_process_launched_without_a_lease_keeps_its_threads(monkeypatch):
    import torch

    monkeypatch.delenv(SHARE_DIR_ENV, raising=False)
    before = torch.get_num_threads()
    ThreadShare(every_s=0.0).rebalance()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("cpu_workers", "slots"), [(None, 2), (1, 1), (3, 3)])
def test_a_cpu_machine_pool_holds_runtime_cpu_workers(cpu_workers, slots, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(cpus, "node_cores", lambda: 2)
    profile = load_profile("tiny")
    profile = profile.model_copy(update={"runtime": profile.runtime.model_copy(update={"cpu_workers": cpu_workers})})
    assert scaleout.gpu_pool_limit(profile) == slots


def test_a_one_core_machine_runs_one_worker_at_a_time(monkeypatch):
    monkeypatch.setattr(cpus, "node_cores", lambda: 1)
    assert cpus.cpu_pool_limit(None) == 1


_REPORT_SHARE = (
    "import os, pathlib\nfrom dagster_pipes import open_dagster_pipes\n"
    "from widen_dag.launch.cpus import SHARE_DIR_ENV, sharing_workers\n"
    "with open_dagster_pipes() as pipes:\n"
    "    folder = os.environ.get(SHARE_DIR_ENV)\n"
    "    pipes.report_asset_materialization(metadata={'share_dir': folder or '',\n"
    "        'sharing': sharing_workers(pathlib.Path(folder)) if folder else 0})\n"
)


class _ReportShare(dg.PipesSubprocessClient):
    def run(self, *, command, context, extras=None, env=None, **kwargs):
        return super().run(command=[sys.executable, "-c", _REPORT_SHARE], context=context, extras=extras, env=env)


def _launched(asset_fn, tmp_path) -> dict:
    res = {
        "pipeline": PipelineResource(profile="tiny", lake_root=str(tmp_path / "lake")),
        "pipes_subprocess_client": _ReportShare(),
    }
    result = dg.materialize([asset_fn], resources=res)
    return {k: v.value for k, v in result.asset_materializations_for_node(asset_fn.op.name)[0].metadata.items()}


def test_a_trainer_asset_runs_its_worker_on_a_shared_lease_and_a_whole_node_asset_alone(tmp_path, monkeypatch):
    """The op tag decides: a SHARED_CORES_POOL asset's worker is told where its fellow trainers'
    leases are (and counts itself among them); a GPU_POOL asset's worker holds the node alone."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a machine without GPUs
    monkeypatch.setenv(cpus.LOCK_DIR_ENV, str(tmp_path / "locks"))

    @dg.asset(name="a_trainer", **SHARED_CORES_POOL)
    def a_trainer(context, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient):
        return run_worker(context, pipeline, pipes_subprocess_client, "environment")

    @dg.asset(name="an_engine", **GPU_POOL)
    def an_engine(context, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient):
        return run_worker(context, pipeline, pipes_subprocess_client, "environment")

    shared = _launched(a_trainer, tmp_path)
    assert shared["share_dir"] == str(tmp_path / "locks") and shared["sharing"] == 1
    assert _launched(an_engine, tmp_path)["share_dir"] == ""
