"""A worker stopped with SIGTERM (a cancelled run, a timeout, a stopped pod) unwinds: its
``finally`` blocks run, which is where a vLLM engine is shut down."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap


def test_sigterm_unwinds_a_worker_so_its_cleanup_runs(tmp_path):
    marker = tmp_path / "closed"
    child = textwrap.dedent(
        f"""
        import time
        from widen_dag.workers.common import _exit_cleanly_on_sigterm

        _exit_cleanly_on_sigterm()  # what open_worker() does first
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            open({str(marker)!r}, "w").write("engine closed")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert marker.read_text() == "engine closed"  # written by the finally block before the exit
