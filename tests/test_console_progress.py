"""The console of `widen-dag demo`/`smoke`: progress lines, the stage view, the event log file."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from widen_dag.defs.console import RunFollower
from widen_dag.progress import ProgressReporter, StageView, parse_progress, progress_line

REPO = Path(__file__).resolve().parents[1]


def test_a_progress_line_reads_back_and_other_log_lines_are_not_progress():
    assert parse_progress(progress_line("trees searched", 12, 40)) == ("trees searched", 12, 40)
    assert parse_progress("step 12/400 loss 1.2345") is None
    assert parse_progress("progress: no numbers here") is None


def test_the_reporter_sends_the_first_and_last_report_of_a_fast_loop_and_none_between():
    sent: list[str] = []
    report = ProgressReporter(sent.append, seconds=3600)
    for step in range(1, 401):
        report("training steps", step, 400)
    assert sent == [progress_line("training steps", 1, 400), progress_line("training steps", 400, 400)]


def test_the_plain_view_prints_each_change_and_each_tenth_of_a_task_once():
    out = io.StringIO()
    view = StageView(out, live=False)
    for name in ("policy_model", "search_trees"):
        view.add(name)
    with view:
        view.start("policy_model")
        for step in range(401):
            view.progress("policy_model", "training steps", step, 400)
        view.finish("policy_model")
        view.abandon(["policy_model", "search_trees"])
    lines = [re.sub(r"^\[\d+m\d\ds\] ", "", line) for line in out.getvalue().splitlines()]
    assert lines[0] == "stages: policy_model, search_trees"
    assert lines[1] == "policy_model: running"
    tenths = [line for line in lines if line.startswith("policy_model: training steps")]
    assert [t.split()[3] for t in tenths] == [f"{s}/400" for s in range(0, 401, 40)]
    assert re.fullmatch(r"policy_model: done in \dm\d\ds", lines[-2])
    assert lines[-1] == "search_trees: not run"  # a finished stage is not abandoned


def test_the_live_view_draws_one_line_per_stage_with_its_state_bar_and_count():
    view = StageView(io.StringIO(), live=True)
    for name in ("policy_model", "search_trees", "sft_checkpoint"):
        view.add(name)
    view.start("policy_model")
    view.progress("policy_model", "training steps", 400, 400)
    view.finish("policy_model")
    view.start("search_trees")
    view.progress("search_trees", "trees searched", 3, 40)
    screen = io.StringIO()
    from rich.console import Console

    Console(file=screen, width=120).print(view.table())
    rows = screen.getvalue().splitlines()
    assert [r.split()[1:3] for r in rows] == [
        ["policy_model", "done"],
        ["search_trees", "running"],
        ["sft_checkpoint", "waiting"],
    ]
    assert "training steps 400/400" in rows[0] and "trees searched 3/40" in rows[1]
    assert "━" in rows[1] and "━" not in rows[2]  # a bar where a total is known


def test_a_runs_events_drive_the_view_progress_lines_included():
    @dg.asset
    def counted(context) -> None:
        context.log.info("a line that is not progress")
        for done in (1, 2, 4):
            context.log.info(progress_line("units", done, 4))

    @dg.asset(deps=[counted])
    def broken() -> None:
        raise ValueError("boom")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([counted, broken], instance=instance, raise_on_error=False)
    view = StageView(io.StringIO(), live=False)
    RunFollower(instance, result.run_id, view, stage=lambda step: f"{step}!").poll()
    counted_stage, broken_stage = view.stages["counted!"], view.stages["broken!"]
    assert (counted_stage.state, counted_stage.task, counted_stage.done, counted_stage.total) == ("done", "units", 4, 4)
    assert broken_stage.state == "failed" and broken_stage.task is None


@pytest.mark.slow
def test_smoke_on_a_pipe_prints_plain_stage_lines_and_the_summary_and_logs_the_event_log_to_a_file(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "WIDEN_DAG_LAKE": str(tmp_path / "lake")}
    cli = Path(sys.executable).parent / "widen-dag"
    res = subprocess.run([str(cli), "smoke"], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "stages: compute_environment, raw_problems, stg_problems" in out
    for step in ("compute_environment", "raw_problems", "stg_problems"):
        assert re.search(rf"^\[\d+m\d\ds\] {step}: running$", out, re.M), step
        assert re.search(rf"^\[\d+m\d\ds\] {step}: done in \d+m\d\ds$", out, re.M), step
    assert "smoke: SUCCESS" in out and "dagster dev -w workspace.yaml" in out
    # Neither the event log nor framework warnings reach the console...
    for noise in (" - dagster - DEBUG - ", "STEP_START", "BetaWarning", "PreviewWarning", "Warning:"):
        assert noise not in out and noise not in res.stderr, noise
    # ...they are in the log file in the Dagster home, which the console names.
    log_file = Path(re.search(r"^Event log: (.+)$", out, re.M)[1])
    assert log_file.parent == tmp_path / "home" / "logs"
    log = log_file.read_text()
    for event in ("RUN_START", "STEP_START", "STEP_SUCCESS", "ASSET_MATERIALIZATION", "RUN_SUCCESS", "BetaWarning"):
        assert event in log, event
    assert "compute environment: {" in log  # a worker's line relayed through Pipes
