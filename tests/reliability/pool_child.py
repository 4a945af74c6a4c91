"""A widen-dag launcher whose run holds the `gpu` pool slot (test_faults): ``python -m
tests.reliability.pool_child hold|quick <marker file>``. `hold` runs a step that writes the
marker and then waits to be killed; `quick` runs a step that takes the slot and finishes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg

from widen_dag.cli import _execute, init_home


@dg.asset(pool="gpu")
def gpu_stage() -> None:
    """Takes the one `gpu` slot; in `hold` mode says so in the marker file and waits."""
    marker = Path(sys.argv[2])
    if sys.argv[1] == "hold":
        marker.write_text("holding")
        time.sleep(600)


def gpu_job() -> dg.JobDefinition:
    return dg.Definitions(assets=[gpu_stage], jobs=[dg.define_asset_job("gpu_stage_job", [gpu_stage])]).resolve_job_def(
        "gpu_stage_job"
    )


if __name__ == "__main__":
    init_home()
    ok, _ = _execute(gpu_job, {}, sys.argv[1])
    sys.exit(0 if ok else 1)
