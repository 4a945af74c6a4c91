"""A machine's GPUs shared by the local workers that run on it side by side.

Pool ``gpu`` admits as many GPU stages at once as the node's GPUs hold (``gpu_pool_limit``,
written by ``widen-dag init-home``), and each local worker is handed the ids it owns through
``CUDA_VISIBLE_DEVICES``. Owning a GPU is holding an exclusive ``flock`` on its lock file while
the worker runs, in the process that launched it: the kernel drops the lock when that process
ends, however it ends, so a crashed run never strands a GPU. Pods need none of this: Kubernetes'
device plugin hands each pod its GPUs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from widen_dag.launch import lock_dirs

LOCK_DIR_ENV = "WIDEN_DAG_GPU_LOCKS"


class GpuLeaseError(ValueError):
    """A worker that needs more GPUs than the node has."""


def node_gpu_ids(gpus_per_node: int | None = None) -> list[str]:
    """The GPU ids local workers share: the first ``gpus_per_node`` (``runtime.gpus_per_node``)
    of ``$CUDA_VISIBLE_DEVICES`` or of 0..N-1; unset, every GPU this process sees (the variable,
    else nvidia-smi's list; none without a driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = [i.strip() for i in visible.split(",") if i.strip()] if visible is not None else None
    if gpus_per_node is not None:
        ids = listed if listed is not None else [str(i) for i in range(gpus_per_node)]
        if len(ids) < gpus_per_node:
            raise GpuLeaseError(
                f"runtime.gpus_per_node={gpus_per_node}, but CUDA_VISIBLE_DEVICES={visible!r} shows {len(ids)} GPU(s)"
            )
        return ids[:gpus_per_node]
    if listed is not None:
        return listed
    return _nvidia_smi_ids()


def _nvidia_smi_ids() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def pool_limit(node_gpus: int, gpus_per_worker: int) -> int:
    """Slots of pool ``gpu``: how many workers of ``gpus_per_worker`` GPUs the node holds at once
    (1 on a machine without GPUs, where stages share the CPUs)."""
    if node_gpus <= 0 or gpus_per_worker <= 0:
        return 1
    return max(1, node_gpus // gpus_per_worker)


def default_lock_dir() -> Path:
    """``$WIDEN_DAG_GPU_LOCKS``, or one folder per user in the system temp folder: shared by every
    Dagster run on the machine."""
    return lock_dirs.default_lock_dir(LOCK_DIR_ENV, "gpu")


def _try_lock(path: Path) -> IO[str] | None:
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def gpu_lease(
    count: int,
    ids: list[str],
    *,
    lock_dir: Path | None = None,
    poll_s: float = 2.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[list[str]]:
    """Own ``count`` of ``ids`` (all or none) until the block ends, waiting while other workers
    hold them; yields the ids owned ([] when ``count`` is 0 or the node has no GPUs)."""
    if count <= 0 or not ids:
        yield []
        return
    if count > len(ids):
        raise GpuLeaseError(f"a worker needs {count} GPUs, this node has {len(ids)} ({','.join(ids)})")
    folder = lock_dirs.own_lock_dir(lock_dir or default_lock_dir(), LOCK_DIR_ENV, "GPU")
    held: dict[str, IO[str]] = {}
    waited = False
    try:
        while True:
            # One allocation at a time, so two workers never each take half of what both need.
            with (folder / "allocate.lock").open("a") as allocating:
                fcntl.flock(allocating, fcntl.LOCK_EX)
                for gpu in ids:
                    handle = _try_lock(folder / f"gpu-{gpu}.lock")
                    if handle is not None:
                        held[gpu] = handle
                        if len(held) == count:
                            break
                if len(held) == count:
                    break
                for handle in held.values():
                    handle.close()  # closing the file drops its lock
                held.clear()
            if not waited and on_wait is not None:
                on_wait(f"waiting for {count} free GPU(s) of {','.join(ids)}")
            waited = True
            time.sleep(poll_s)
        yield list(held)
    finally:
        for handle in held.values():
            handle.close()
