"""Fault injection shared by the reliability tests and bench/reliability.py: each routine
kills real processes with SIGKILL at chosen points and reports what survived."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from widen_dag.search.store import TreeStore
from widen_dag.storage.lake import Lake, LakeError

REPO = Path(__file__).resolve().parents[2]


def _child(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _search_child(lake: Path, delay: float) -> subprocess.Popen:
    return _child("tests.reliability.search_child", str(lake), str(delay))


def search_kill9(workdir: Path, kills: int = 5, seed: int = 7) -> dict:
    """kill -9 the search at ``kills`` random points, rerunning each time, then finish; compare
    with an uninterrupted run of the same seed."""
    reference = workdir / "reference"
    proc = _search_child(reference, 0.0)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    expected = Lake(str(reference)).read_table("search_trees", "shard-000")

    killed = workdir / "killed"
    store = TreeStore(Lake(str(killed)), "shard-000", "k")
    rng = random.Random(seed)
    reused, codes = [], []
    for _ in range(kills):
        proc = _search_child(killed, 0.02)
        wanted, seen = rng.randint(1, 3), 0
        while seen < wanted:  # let it finish a random number of trees, then kill mid-flight
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            seen += line.strip() == "saved"
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        codes.append(proc.wait(timeout=60))
        reused.append(len(store.finished()))
    proc = _search_child(killed, 0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    final = Lake(str(killed)).read_table("search_trees", "shard-000")
    trees = final["tree_id"].n_unique()
    leftovers = [p.name for p in (killed / "search_checkpoints" / "shard-000-k").iterdir() if p.name.startswith(".")]
    return {
        "kills": kills,
        "all_killed_mid_run": codes == [-signal.SIGKILL] * kills,
        "trees": trees,
        "trees_identical_to_uninterrupted": final.equals(expected),
        "duplicate_node_ids": final.height - final["node_id"].n_unique(),
        "finished_trees_after_each_kill": reused,
        "tree_reuse_pct": round(100.0 * reused[-1] / trees, 1) if trees else 0.0,
        "leftover_temp_files": len(leftovers),
        "published": "published" in out,
    }


def sql_kill9_mid_write(workdir: Path) -> dict:
    """kill -9 the SQL layer between writing `preference_pairs` and publishing it."""
    proc = _child("tests.reliability.fault_child", "sql", str(workdir))
    proc.communicate(timeout=120)
    lake = Lake(str(workdir / "lake"))
    folder = workdir / "lake" / "preference_pairs"
    try:
        lake.read_table("preference_pairs")
        readable = True
    except LakeError:
        readable = False
    return {
        "killed": proc.returncode == -signal.SIGKILL,
        "upstream_models_published": all(lake.has_table(m) for m in ("tree_paths", "path_stats")),
        "partial_table_visible": lake.has_table("preference_pairs") or readable,
        "temporary_files_left": sorted(p.name for p in folder.iterdir()) if folder.exists() else [],
    }


def checkpoint_kill9_mid_save(workdir: Path) -> dict:
    proc = _child("tests.reliability.fault_child", "checkpoint", str(workdir))
    proc.communicate(timeout=60)
    parent = workdir / "lake" / "checkpoints"
    return {
        "killed": proc.returncode == -signal.SIGKILL,
        "checkpoint_visible": (parent / "sft").exists(),
        "hidden_staging_left": [p.name for p in parent.iterdir() if p.name.startswith(".staging-")],
    }


def training_kill9_and_resume(workdir: Path, kill_at: int = 5) -> dict:
    """kill -9 training at step ``kill_at`` (Trainer checkpoints every 2 steps), rerun, and
    compare with an uninterrupted run."""

    def run(folder: Path, kill: int) -> tuple[int, dict | None]:
        folder.mkdir(parents=True, exist_ok=True)
        proc = _child("tests.reliability.fault_child", "train", str(folder), str(kill))
        _, err = proc.communicate(timeout=300)
        result = folder / "result.json"
        return proc.returncode, (json.loads(result.read_text()) if result.exists() else {"stderr": err[-2000:]})

    code_ref, reference = run(workdir / "uninterrupted", 0)
    code_killed, _ = run(workdir / "interrupted", kill_at)
    code_resumed, resumed = run(workdir / "interrupted", 0)
    same = (
        reference
        and resumed
        and "weights" in reference
        and "weights" in resumed
        and max(abs(a - b) for a, b in zip(reference["weights"], resumed["weights"], strict=True)) < 1e-5
    )
    return {
        "killed_at_step": kill_at,
        "killed": code_killed == -signal.SIGKILL,
        "runs_ok": code_ref == 0 and code_resumed == 0,
        "resumed_from_step": (resumed or {}).get("resumed_from_step"),
        "steps_after_resume": (resumed or {}).get("steps"),
        "weights_equal_uninterrupted": bool(same),
        "detail": None if code_resumed == 0 else resumed,
    }
