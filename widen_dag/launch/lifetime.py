"""A local worker's lifetime tied to the process that launched it.

A worker runs under coreutils ``timeout``, which outlives a launcher killed with SIGKILL (kill -9,
the OOM killer, a closed terminal). Left alone, such a worker would go on writing its stage's
artifacts after ``widen-dag`` released the run (``widen_dag.cli.release_orphaned_runs``), next
to the rerun of the same stage. So the launcher passes its pid in the Pipes extras and the
worker stops itself, through SIGTERM and its clean exit, once that process is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

LAUNCHER_PID_EXTRA = "launcher_pid"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process whose parent died too waits as a zombie until init reaps it, which can
    # take a while (seen here): it still answers signal 0, but it is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def stop_with_launcher(launcher_pid: int | str | None, interval_s: float = 2.0) -> threading.Thread | None:
    """Watch ``launcher_pid`` from a daemon thread; once it is gone, send this process SIGTERM
    (whose handler ends the worker through SystemExit, so ``finally`` blocks run). None: no
    launcher named (a pod, or a worker started by hand)."""
    if launcher_pid in (None, ""):
        return None
    pid = int(launcher_pid)

    def watch() -> None:
        while pid_alive(pid):
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="stop-with-launcher", daemon=True)
    thread.start()
    return thread
