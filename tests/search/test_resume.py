from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from widen_dag.lake import Lake
from widen_dag.search.store import TreeStore

REPO = Path(__file__).resolve().parents[2]


def _child(lake: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.search.kill_child", str(lake), str(delay)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    proc = _child(reference, 0.0)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    expected = Lake(str(reference)).read_table("search_trees", "shard-000")

    killed = tmp_path / "killed"
    store = TreeStore(Lake(str(killed)), "shard-000", "k")
    rng = random.Random(7)
    reused_counts, codes = [], []
    for _ in range(5):  # kill -9 at five random points, rerunning each time
        proc = _child(killed, 0.02)
        wanted, seen = rng.randint(1, 3), 0
        while seen < wanted:  # let it finish a random number of trees, then kill mid-flight
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            seen += line.strip() == "saved"
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        codes.append(proc.wait(timeout=60))
        reused_counts.append(len(store.finished()))
    proc = _child(killed, 0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "published" in out
    final = Lake(str(killed)).read_table("search_trees", "shard-000")

    assert codes == [-signal.SIGKILL] * 5  # every run really died mid-search
    assert final["node_id"].n_unique() == final.height          # no duplicate nodes
    assert final.equals(expected)                                 # same trees as without crashes
    assert reused_counts == sorted(reused_counts) and reused_counts[-1] > 0  # finished trees kept
    assert not any(p.name.startswith(".") for p in (killed / "search_checkpoints" / "shard-000-k").iterdir())
