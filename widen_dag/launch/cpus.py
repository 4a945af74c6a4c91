"""A GPU-less machine's cores shared by the local workers that run on it side by side.

On a node without GPUs pool ``gpu`` admits ``runtime.cpu_workers`` workers at once (2 by default
on a machine with 2+ cores; ``widen-dag init-home``). Training workers share the cores: each one
re-reads, between optimizer steps, how many sharing workers are alive and sets its torch threads
to its part of the cores (``ThreadShare``), so a worker that runs alone has every core and two
side by side have half each. On this project's 2-core CPU two 1-thread trainers do 1.49x the
steps per second of one 2-thread trainer, and the thread count leaves the results bit for bit
unchanged. Workers whose engines fix their threads when they start (vLLM, evaluation's
processes) need the whole node: they wait until the sharing workers are done, and sharing
workers wait while one of them runs. Only workers started here with ``runtime.kind: local`` take
leases: pods bring their own cores, and a GPU node's workers own GPUs instead.

Like GPU leases (``widen_dag.launch.gpus``) a lease is an ``flock`` held by the process that
launched the worker, which the kernel drops when that process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from widen_dag.launch import lock_dirs

LOCK_DIR_ENV = "WIDEN_DAG_CPU_LOCKS"
# Set by the launcher for a worker that shares the node: where its fellow workers' leases are.
SHARE_DIR_ENV = "WIDEN_DAG_CPU_SHARE"
# The torch threads a sharing worker's part comes from (the launcher's cores).
SHARE_CORES_ENV = "WIDEN_DAG_CPU_SHARE_CORES"


def node_cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_pool_limit(cpu_workers: int | None) -> int:
    """Workers side by side on a node without GPUs: ``runtime.cpu_workers``, else 2 where the
    node has 2+ cores (one sharing pair), else 1."""
    if cpu_workers is not None:
        return cpu_workers
    return 2 if node_cores() >= 2 else 1


def default_lock_dir() -> Path:
    """``$WIDEN_DAG_CPU_LOCKS``, or one folder per user in the system temp folder: shared by every
    Dagster run of this user on the machine (another user's workers are not counted)."""
    return lock_dirs.default_lock_dir(LOCK_DIR_ENV, "cpu")


def _held(path: Path) -> bool:
    """Whether a process holds ``path``'s flock; a lease file nobody holds is stale (its
    holder died) and is removed. Opened without creating it: a file its holder just removed
    stays removed."""
    try:
        handle = path.open("r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False


def sharing_workers(lock_dir: Path) -> int:
    """How many sharing workers hold a lease in ``lock_dir`` now (and, on the way, the files of
    leases whose holders died, or died while taking one, removed)."""
    for half_made in lock_dir.glob(".new-*"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - half_made.stat().st_mtime > 60:  # (a young one may be about to be locked)
                _held(half_made)
    return sum(_held(p) for p in lock_dir.glob("share-*.lock"))


@contextlib.contextmanager
def cpu_lease(
    *, whole_node: bool, lock_dir: Path | None = None, poll_s: float = 1.0, on_wait: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold a share of the node's cores (or, with ``whole_node``, all of them) until the block
    ends; yields the lock folder, which a sharing worker reads through ``ThreadShare``.

    ``node.lock`` is a readers-writer lock: sharing workers hold it shared, a whole-node worker
    exclusively. Each sharing worker also holds its own ``share-*.lock`` file, so the others can
    count it."""
    folder = lock_dir or default_lock_dir()
    lock_dirs.own_lock_dir(folder, LOCK_DIR_ENV, "CPU")
    node = (folder / "node.lock").open("a")
    mode = fcntl.LOCK_EX if whole_node else fcntl.LOCK_SH
    own: Path | None = None
    try:
        waited = False
        while True:
            try:
                fcntl.flock(node, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait(
                        "waiting for the node's cores: " + ("other workers share them" if whole_node else "a worker has them all")
                    )
                waited = True
                time.sleep(poll_s)
        share = None
        if not whole_node:
            # Locked under a temporary name, then renamed: a counter never sees it unlocked.
            tmp = folder / f".new-{uuid.uuid4().hex}"
            share = tmp.open("a")
            fcntl.flock(share, fcntl.LOCK_EX)
            own = folder / f"share-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
            tmp.rename(own)
        try:
            yield folder
        finally:
            if share is not None:
                with contextlib.suppress(FileNotFoundError):
                    own.unlink()  # type: ignore[union-attr]
                share.close()
    finally:
        node.close()  # closing the file drops its lock


def worker_env(lock_dir: Path) -> dict[str, str]:
    """The environment a sharing worker needs to find its fellow workers."""
    return {SHARE_DIR_ENV: str(lock_dir), SHARE_CORES_ENV: str(node_cores())}


class ThreadShare:
    """A sharing worker's torch threads: its part of the node's cores, re-read at most every
    ``every_s`` seconds (``rebalance`` is cheap enough to call at every optimizer step). A
    process launched without a lease (a GPU node, a pod, a test) keeps its threads."""

    def __init__(self, every_s: float = 2.0) -> None:
        folder = os.environ.get(SHARE_DIR_ENV)
        self.folder = Path(folder) if folder else None
        self.cores = int(os.environ.get(SHARE_CORES_ENV) or node_cores())
        self.every_s = every_s
        self._checked = float("-inf")
        self.used: set[int] = set()  # the thread counts the steps ran with

    def threads(self) -> int:
        assert self.folder is not None
        return max(1, self.cores // max(1, sharing_workers(self.folder)))

    def rebalance(self) -> None:
        import torch

        if self.folder is not None and time.monotonic() - self._checked >= self.every_s:
            self._checked = time.monotonic()
            wanted = self.threads()
            if torch.get_num_threads() != wanted:
                torch.set_num_threads(wanted)
        self.used.add(torch.get_num_threads())

    def span(self) -> str:
        """The torch threads the steps ran with, e.g. "1-2" for a trainer that shared the cores
        for a while and then had them all (metadata: ``torch_threads``)."""
        if not self.used:
            return ""
        low, high = min(self.used), max(self.used)
        return str(low) if low == high else f"{low}-{high}"
