"""kill -9 at chosen points of search, the SQL layer, checkpoint publishing and training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from tests.reliability import faults

pytestmark = pytest.mark.slow  # real processes killed mid-run: minutes


def test_search_killed_five_times_reruns_to_the_uninterrupted_trees(tmp_path):
    r = faults.search_kill9(tmp_path, kills=5)
    assert r["all_killed_mid_run"] and r["published"]
    assert r["trees_identical_to_uninterrupted"] and r["duplicate_node_ids"] == 0
    counts = r["finished_trees_after_each_kill"]
    assert counts == sorted(counts) and counts[-1] > 0 and r["tree_reuse_pct"] > 0  # finished trees are kept
    assert r["leftover_temp_files"] == 0


def test_sql_model_killed_mid_write_leaves_no_table_that_looks_complete(tmp_path):
    r = faults.sql_kill9_mid_write(tmp_path)
    assert r["killed"] and r["upstream_models_published"]
    assert not r["partial_table_visible"]
    assert all(name.startswith(".") for name in r["temporary_files_left"])  # hidden, never listed


def test_checkpoint_killed_mid_save_is_not_published(tmp_path):
    r = faults.checkpoint_kill9_mid_save(tmp_path)
    assert r["killed"] and not r["checkpoint_visible"]
    assert len(r["hidden_staging_left"]) == 1


def test_training_killed_mid_run_resumes_from_its_last_trainer_checkpoint(tmp_path):
    r = faults.training_kill9_and_resume(tmp_path, kill_at=5)
    assert r["killed"] and r["runs_ok"], r["detail"]
    assert r["resumed_from_step"] == 4  # checkpoints every 2 steps: 4 is the newest before step 5
    assert r["steps_after_resume"][0] > 4
    assert r["weights_equal_uninterrupted"]


def test_a_killed_launcher_does_not_keep_the_gpu_slot_from_the_next_run(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    marker = tmp_path / "holding"
    child = [sys.executable, "-m", "tests.reliability.pool_child"]
    holder = subprocess.Popen([*child, "hold", str(marker)], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the holding run never took the gpu slot"
    os.killpg(holder.pid, signal.SIGKILL)  # launcher and step process: nothing left to report the run
    holder.wait()
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        (orphan,) = instance.get_runs()
        assert orphan.status == dg.DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_run_ids() == {orphan.run_id}
    # Without the release the next run would wait for the slot for ever (timeout = failure).
    nxt = subprocess.run([*child, "quick", str(marker)], env=env, capture_output=True, text=True, timeout=180)
    assert nxt.returncode == 0, nxt.stdout[-2000:] + nxt.stderr[-2000:]
    assert f"run {orphan.run_id} (gpu_stage_job): its process" in nxt.stdout
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_run_ids() == set()


def test_a_killed_but_unreaped_process_counts_as_gone():
    from widen_dag.launch.lifetime import pid_alive

    zombie = subprocess.Popen(["sleep", "60"])
    os.kill(zombie.pid, signal.SIGKILL)
    time.sleep(0.5)  # dead, not yet reaped: it still answers signal 0
    try:
        assert not pid_alive(zombie.pid)
        assert pid_alive(os.getpid())
    finally:
        zombie.wait()


_WORKER = """
import sys, time
from pathlib import Path
from widen_dag.launch.lifetime import stop_with_launcher
from widen_dag.workers.common import _exit_cleanly_on_sigterm

_exit_cleanly_on_sigterm()
stop_with_launcher(sys.argv[1], interval_s=0.2)
try:
    Path(sys.argv[2]).write_text("running")
    time.sleep(120)
finally:
    Path(sys.argv[2]).write_text("cleaned up")
"""


def test_a_worker_whose_launcher_is_killed_stops_itself_through_its_clean_exit(tmp_path):
    """Only the launcher gets kill -9 (the OOM killer's choice, say): its worker, which runs on
    under `timeout`, notices, and ends through SIGTERM's SystemExit, so its finally blocks run,
    instead of writing on beside the rerun that `widen-dag` starts after releasing the run."""
    launcher = subprocess.Popen(["sleep", "120"])
    marker = tmp_path / "worker.state"
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(launcher.pid), str(marker)])
    try:
        for _ in range(300):  # the worker is up
            if marker.exists():
                break
            time.sleep(0.1)
        assert marker.read_text() == "running"
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert worker.wait(timeout=60) == 128 + signal.SIGTERM
        assert marker.read_text() == "cleaned up"
    finally:
        for p in (launcher, worker):
            if p.poll() is None:
                p.kill()
                p.wait()
