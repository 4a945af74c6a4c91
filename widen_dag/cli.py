"""`widen-dag`: run the preset jobs into a persistent Dagster home, and set that home up.

widen-dag demo [--profile tiny] [--seed S]   the whole pipeline, every shard, one run
widen-dag smoke                    problems + the worker round trip
widen-dag init-home                write $DAGSTER_HOME/dagster.yaml (pool gpu = 1, run monitoring)
widen-dag trace dpo-cdpo [--pair P] a checkpoint's data versions, pairs, tree nodes, problems
widen-dag plan [--profile P] [--gpus N] [--gpu-memory-gib G]
                                   GPU memory per stage vs the GPUs; exits 1 naming a stage that does not fit
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from importlib import resources
from pathlib import Path

DEFAULT_HOME = ".dagster_home"


def dagster_home() -> Path:
    """$DAGSTER_HOME, or ./.dagster_home (created) so runs persist and show in the UI."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / DEFAULT_HOME).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def init_home() -> Path:
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        with resources.as_file(resources.files("widen_dag") / "templates" / "dagster.yaml") as src:
            shutil.copyfile(src, target)
    return home


def _job(name: str):
    from widen_dag.definitions import defs

    return defs.resolve_job_def(name)


def _smoke_job():
    return _job("smoke")


def _demo_job():
    return _job("demo")


def _dpo_variants_job():
    return _job("dpo_variants")


def _evaluation_job():
    return _job("evaluation")


def print_ablation_table() -> None:
    from widen_dag.evaluate import report
    from widen_dag.storage.lake import Lake, default_lake_root

    lake = Lake(default_lake_root())
    if lake.has_table("ablation_report"):
        summary = lake.read_table("ablation_report")
        print("\nAblation (the paper's Table 5 layout):\n" + report.markdown_table(summary))
        print("\n".join(f"- {n}" for n in report.direction_notes(summary)))
        print(f"\nParquet: {lake.table_uri('ablation_report')}")
    if lake.has_table("mcts_decode"):
        from widen_dag.evaluate import table7
        from widen_dag.profiles import load_profile

        ks = load_profile().eval.mcts_decode.test_at
        print(
            "\nMCTS decode (the paper's Table 7 layout):\n"
            + table7.markdown_table7(table7.summarize_decode(lake.read_table("mcts_decode"), ks), ks)
        )


FAILED_STEPS: list[str] = []  # every failed step of this command's runs, printed last


def failed_steps(instance, run_id: str) -> list[str]:
    """One line per failed step of a run: the step and its cause (a dg.Failure's description,
    which for an unrecoverable failure ends with the fix), else the error's last line."""
    import dagster as dg

    lines = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        data = event.step_failure_data
        cause = (
            data.user_failure_data.description
            if data.user_failure_data and data.user_failure_data.description
            else (data.error.message.strip().splitlines() or ["(no message)"])[-1]
            if data.error
            else "(no message)"
        )
        lines.append(f"{event.step_key}: {cause.strip()}")
    return lines


SEED_TAG = "widen_dag/seed"
# host:pid of the widen-dag process that executes a run in-process (no daemon watches those).
LAUNCHER_TAG = "widen_dag/launcher"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed step process whose parent died too waits as a zombie until init reaps it, which
    # can take a while (seen here): it still answers signal 0, but it is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def release_orphaned_runs(instance) -> list[str]:
    """Fail the runs a killed widen-dag process left behind and free their pool slots.

    A run executed in-process by `widen-dag demo` that is killed (kill -9, OOM, a closed
    terminal) stays STARTED and keeps its `gpu` slot: with no daemon to notice, the next demo
    would wait for that slot for ever. A run counts as orphaned only if this host launched it
    and no process that wrote its events (launcher and step processes) is still alive; runs
    launched elsewhere (the UI's daemon, another machine) are left to their own monitoring.
    Finished runs still holding slots are freed too (the daemon does that after a delay).
    Returns one line per run it released."""
    import dagster as dg

    host, released = socket.gethostname(), []
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return released
    holding = storage.get_concurrency_run_ids()
    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=unfinished)):
        launcher = run.tags.get(LAUNCHER_TAG, "")
        launcher_host, _, launcher_pid = launcher.rpartition(":")
        if launcher_host != host:
            continue
        events = (entry.dagster_event for entry in instance.all_logs(run.run_id))
        pids = {event.pid for event in events if event is not None and event.pid} | {int(launcher_pid)}
        if any(_pid_alive(pid) for pid in pids):
            continue
        instance.report_run_failed(run, f"widen-dag: the process running this run ({launcher}) is gone; marked failed")
        released.append(f"run {run.run_id} ({run.job_name}): its process {launcher} is gone; marked failed")
    for run_id in holding:
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            freed = storage.free_concurrency_slots_for_run(run_id)
            if freed:
                released.append(f"run {run_id}: freed {freed} pool slot(s) it still held")
    return released


# The tiny bootstrapped models do not depend on the run seed (with_run_seed keeps them), so
# a multi-seed bench may train them once and copy them into each further seed's lake.
BASE_MODEL_ASSETS = ("policy_model", "student_base")


def _execute(target, tags: dict[str, str], label: str, seed: int | None = None, skip: tuple[str, ...] = ()) -> tuple[bool, str]:
    import dagster as dg

    start = time.perf_counter()
    instance = dg.DagsterInstance.get()
    for line in release_orphaned_runs(instance):
        print(f"widen-dag: {line}")
    selection = None
    if skip:
        keys = target().asset_layer.executable_asset_keys
        selection = [k for k in keys if k.to_user_string() not in skip]
    # The seed is run configuration of the pipeline resource (and a run tag to filter by), so
    # each seed's runs show it in the UI and launch the same way from there.
    run_config = {"resources": {"pipeline": {"config": {"seed": seed}}}} if seed is not None else None
    tags = {**tags, LAUNCHER_TAG: f"{socket.gethostname()}:{os.getpid()}"}
    tags = tags if seed is None else {**tags, SEED_TAG: str(seed)}
    with dg.execute_job(
        dg.reconstructable(target), instance=instance, tags=tags, run_config=run_config, asset_selection=selection
    ) as result:
        ok, run_id = result.success, result.run_id
    print(f"\n{label}: {'SUCCESS' if ok else 'FAILURE'} in {time.perf_counter() - start:.0f}s (run {run_id})")
    if not ok:
        FAILED_STEPS.extend(f"[{label}] {line}" for line in failed_steps(instance, run_id))
    return ok, run_id


def run_job(name: str, seed: int | None = None, reuse_base_models: bool = False) -> bool:
    """`smoke`: one run. `demo`: the shard-partitioned pipeline in one run, then one run per
    DPO variant partition (a job may hold only one partitioning). ``seed``: the run seed of
    every run (PipelineResource.seed). ``reuse_base_models``: the demo run leaves out
    policy_model and student_base, which must already be in the lake."""
    import dagster as dg

    from widen_dag.defs.jobs import all_shards_tags
    from widen_dag.defs.partitions import register_profile_shards
    from widen_dag.profiles import load_profile

    home = init_home()
    start = time.perf_counter()
    profile = load_profile()
    register_profile_shards(dg.DagsterInstance.get(), profile)
    skip = BASE_MODEL_ASSETS if reuse_base_models and name == "demo" else ()
    ok, run_id = _execute(_smoke_job if name == "smoke" else _demo_job, all_shards_tags(profile.shard_keys()), name, seed, skip)
    if ok and name == "demo":
        for variant in profile.train.dpo.variants:
            ok, _ = _execute(_dpo_variants_job, {"dagster/partition": variant}, f"dpo_variants[{variant}]", seed)
            if not ok:
                break
        if ok:
            ok, _ = _execute(_evaluation_job, {}, "evaluation", seed)
        if ok:
            print_ablation_table()
    print(f"\n{name}: {'SUCCESS' if ok else 'FAILURE'} in {time.perf_counter() - start:.0f}s")
    print(
        f"Runs are stored in {home}. Open the UI with:\n"
        f"  DAGSTER_HOME={home} .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000\n"
        f"then http://127.0.0.1:3000/runs (runs) and http://127.0.0.1:3000/assets/ablation_report (the table)"
    )
    if FAILED_STEPS:
        # The cause belongs at the end, not hundreds of log lines above the FAILURE line.
        print(f"\n{name}: FAILURE; {len(FAILED_STEPS)} step(s) failed:", file=sys.stderr)
        for line in FAILED_STEPS:
            print(f"  {line}", file=sys.stderr)
    return ok


def trace_command(args: argparse.Namespace) -> int:
    import json

    from widen_dag.lineage.trace import TraceError, render, trace_checkpoint, trace_pair
    from widen_dag.storage.lake import Lake, LakeError, default_lake_root

    lake = Lake(args.lake or default_lake_root())
    try:
        report = trace_pair(lake, args.target, args.pair) if args.pair else trace_checkpoint(lake, args.target)
    except (TraceError, LakeError) as err:
        print(f"widen-dag trace: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    # A partial lake: what could be read is printed, what is missing is said last, and the exit
    # status tells scripts the trace is incomplete.
    for line in report.get("missing", []):
        print(f"widen-dag trace: incomplete: {line}", file=sys.stderr)
    return 3 if report.get("missing") else 0


def profile_command(args: argparse.Namespace) -> int:
    """The resolved profile (YAML), every setting with its description, or the JSON schema."""
    import json

    import yaml

    from widen_dag.profiles import Profile, ProfileError, explain, load_profile

    if args.schema:
        print(json.dumps(Profile.model_json_schema(), indent=2))
        return 0
    if args.explain:
        print("\n".join(explain()))
        return 0
    try:
        profile = load_profile(args.profile)
    except ProfileError as err:
        print(f"widen-dag: {err}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def plan_command(args: argparse.Namespace) -> int:
    from widen_dag.launch.memplan import PlanError, plan, render
    from widen_dag.profiles import ProfileError, load_profile

    try:
        profile = load_profile(args.profile)
        rows = plan(profile, gpus=args.gpus, gpu_memory_gib=args.gpu_memory_gib)
    except (ProfileError, PlanError) as err:
        print(f"widen-dag plan: {err}", file=sys.stderr)
        return 2
    print(f"profile {profile.name}")
    print(render(rows, args.gpu_memory_gib or profile.runtime.gpu_memory_gib))
    failing = [p for _, p in rows if p is not None and not p.fits]
    for p in failing:
        print(f"widen-dag plan: does not fit: {p.verdict()}", file=sys.stderr)
    return 1 if failing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="widen-dag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("demo", "smoke"):
        p = sub.add_parser(name, help=f"run the {name} job")
        p.add_argument("--profile", help="profile name or YAML path (default: $WIDEN_DAG_PROFILE or tiny)")
        p.add_argument("--seed", type=int, help="run seed: search, training and evaluation seeds (default: the profile's)")
        p.add_argument(
            "--reuse-base-models",
            action="store_true",
            help="do not retrain policy_model and student_base: they are already in the lake",
        )
    sub.add_parser("init-home", help="write $DAGSTER_HOME/dagster.yaml")
    tr = sub.add_parser("trace", help="a checkpoint's data, pairs, tree nodes and problems")
    tr.add_argument("target", help="checkpoint name (sft, dpo-cdpo), asset (dpo_checkpoint:cdpo) or folder")
    tr.add_argument("--pair", metavar="PROBLEM_ID", help="show one preference pair node by node")
    tr.add_argument("--lake", help="lake root (default: $WIDEN_DAG_LAKE or ./lake)")
    tr.add_argument("--json", action="store_true", help="print JSON instead of text")
    pr = sub.add_parser("profile", help="show the resolved profile, explain every setting, or print the JSON schema")
    pr.add_argument("--profile", help="profile name or YAML path (default: $WIDEN_DAG_PROFILE or tiny)")
    pr.add_argument("--explain", action="store_true", help="every setting: dotted name, default and what it does")
    pr.add_argument("--schema", action="store_true", help="the profile's JSON schema")
    pl = sub.add_parser("plan", help="GPU memory per stage against the GPUs (exits 1 when a stage does not fit)")
    pl.add_argument("--profile", help="profile name or YAML path (default: $WIDEN_DAG_PROFILE or tiny)")
    pl.add_argument("--gpus", type=int, help="GPUs per stage (default: what the profile asks for)")
    pl.add_argument("--gpu-memory-gib", type=float, help="memory of one GPU (default: runtime.gpu_memory_gib)")
    args = parser.parse_args(argv)
    if args.command == "profile":
        return profile_command(args)
    if args.command == "plan":
        return plan_command(args)
    if args.command == "init-home":
        print(init_home() / "dagster.yaml")
        return 0
    if args.command == "trace":
        return trace_command(args)
    if args.profile:
        os.environ["WIDEN_DAG_PROFILE"] = args.profile
    from widen_dag.profiles import ProfileError, load_profile

    try:
        load_profile()
    except ProfileError as err:
        print(f"widen-dag: {err}", file=sys.stderr)
        return 2
    return 0 if run_job(args.command, args.seed, args.reuse_base_models) else 1


if __name__ == "__main__":
    sys.exit(main())
