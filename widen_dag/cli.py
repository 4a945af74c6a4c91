"""`widen-dag`: run the preset jobs into a persistent Dagster home, and set that home up.

widen-dag demo [--profile tiny] [--seed S] [--verbose]
                                   the whole pipeline, every shard; a live stage view (the
                                   event log goes to $DAGSTER_HOME/logs/), then the table
widen-dag smoke [--verbose]        problems + the worker round trip
widen-dag init-home                write $DAGSTER_HOME/dagster.yaml (pool gpu = the workers this node's GPUs
                                   hold side by side, 1 without GPUs; run monitoring)
widen-dag trace dpo-cdpo [--pair P [--png F]]
                                   a checkpoint's data versions, pairs, tree nodes, problems
widen-dag plan [--profile P] [--gpus N] [--gpu-memory-gib G] [--host-memory-gib H]
                                   GPU memory per stage vs the GPUs; exits 1 naming a stage that does not fit
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
        template = (resources.files("widen_dag") / "templates" / "dagster.yaml").read_text()
        target.write_text(template.replace("default_limit: 1", f"default_limit: {_gpu_pool_limit()}", 1))
    return home


def _gpu_pool_limit() -> int:
    """Slots of pool `gpu` for this node and the profile in $WIDEN_DAG_PROFILE (without GPUs:
    runtime.cpu_workers, widen_dag.launch.cpus)."""
    from widen_dag.launch.scaleout import gpu_pool_limit
    from widen_dag.profiles import load_profile

    return gpu_pool_limit(load_profile(None))


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


def print_ablation_table(reports: Path | None = None) -> None:
    """The ablation table (and Table 7) as the demo's last word, and where each form of it is:
    the Parquet in the lake; with ``reports``, the Markdown and the bar chart written there."""
    from widen_dag.evaluate import report
    from widen_dag.launch.scaleout import deployment_lake_root
    from widen_dag.profiles import load_profile
    from widen_dag.storage.lake import Lake

    lake = Lake(deployment_lake_root(load_profile(None), os.environ.get("WIDEN_DAG_LAKE")))  # the lake Dagster reads
    table = None
    if lake.has_table("ablation_report"):
        summary = lake.read_table("ablation_report")
        table = report.markdown_table(summary)
        notes = "\n".join(f"- {n}" for n in report.direction_notes(summary))
        print("\nAblation (the paper's Table 5 layout):\n" + table)
        print(notes)
        print(f"\nParquet: {lake.table_uri('ablation_report')}")
        if reports is not None:
            reports.mkdir(parents=True, exist_ok=True)
            (reports / "ablation_report.md").write_text(table + "\n\n" + notes + "\n")
            (reports / "ablation_report.png").write_bytes(report.bar_chart_png(summary))
            print(f"Markdown: {reports / 'ablation_report.md'}\nChart: {reports / 'ablation_report.png'}")
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

    from widen_dag.launch.lifetime import pid_alive

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
        if any(pid_alive(pid) for pid in pids):
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


def _execute(
    target,
    tags: dict[str, str],
    label: str,
    seed: int | None = None,
    skip: tuple[str, ...] = (),
    view=None,
    stage=lambda step: step,
) -> tuple[bool, str]:
    """One run of ``target``, executed in this process; ``view`` (a StageView) follows its
    steps, ``stage`` names a step there."""
    import dagster as dg

    from widen_dag.defs.console import following
    from widen_dag.defs.workers import pool_executor_config, trainers_can_overlap
    from widen_dag.launch.gpus import node_gpu_ids

    say = view.note if view is not None else print
    start = time.perf_counter()
    instance = dg.DagsterInstance.get()
    for line in release_orphaned_runs(instance):
        say(f"widen-dag: {line}")
    selection = None
    job = target()
    keys = [k for k in job.asset_layer.executable_asset_keys if k.to_user_string() not in skip]
    if skip:
        selection = keys
    # The seed is run configuration of the pipeline resource (and a run tag to filter by), so
    # each seed's runs show it in the UI and launch the same way from there.
    limit = _pool_limit(instance)
    run_config: dict = (
        pool_executor_config(limit, node_has_gpus=bool(node_gpu_ids()), side_by_side=trainers_can_overlap(job, keys))
        if limit is not None
        else {}
    )
    if seed is not None:
        run_config["resources"] = {"pipeline": {"config": {"seed": seed}}}
    launcher = (LAUNCHER_TAG, f"{socket.gethostname()}:{os.getpid()}")
    tags = {**tags, launcher[0]: launcher[1]}
    tags = tags if seed is None else {**tags, SEED_TAG: str(seed)}
    follow = following(view, launcher, _FOLLOWED_RUNS, stage) if view is not None else contextlib.nullcontext()
    with (
        follow,
        dg.execute_job(
            dg.reconstructable(target), instance=instance, tags=tags, run_config=run_config, asset_selection=selection
        ) as result,
    ):
        ok, run_id = result.success, result.run_id
    RUN_IDS.append(run_id)
    say(f"{label}: {'SUCCESS' if ok else 'FAILURE'} in {time.perf_counter() - start:.0f}s (run {run_id})")
    if not ok:
        FAILED_STEPS.extend(f"[{label}] {line}" for line in failed_steps(instance, run_id))
    return ok, run_id


def _pool_limit(instance) -> int | None:
    """Slots of pool `gpu` on this instance: the limit set for it, else the default limit; None
    where neither is set (Dagster then leaves the pool unlimited)."""
    limits = {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
    if "gpu" in limits:
        return limits["gpu"]
    return instance.get_concurrency_config().pool_config.default_pool_limit


RUN_IDS: list[str] = []  # this command's runs, for the UI links printed last
_FOLLOWED_RUNS: set[str] = set()


def _planned_runs(name: str, profile, reuse_base_models: bool) -> list[tuple]:
    """(job, tags, label, skip, stage name of a step) for each run of a command: `smoke` is one
    run; `demo` is the shard-partitioned pipeline in one run, then one run per DPO variant
    partition (a job may hold only one partitioning), then the evaluation."""
    from widen_dag.defs.jobs import all_shards_tags

    if name == "smoke":
        return [(_smoke_job, all_shards_tags(profile.shard_keys()), name, (), lambda step: step)]
    skip = BASE_MODEL_ASSETS if reuse_base_models else ()
    return [
        (_demo_job, all_shards_tags(profile.shard_keys()), name, skip, lambda step: step),
        *[
            (_dpo_variants_job, {"dagster/partition": v}, f"dpo_variants[{v}]", (), lambda step, v=v: f"{step}[{v}]")
            for v in profile.train.dpo.variants
        ],
        (_evaluation_job, {}, "evaluation", (), lambda step: step),
    ]


def _run_planned(name: str, seed: int | None, reuse_base_models: bool, console, live: bool | None) -> bool:
    import dagster as dg

    from widen_dag.defs.console import step_names
    from widen_dag.defs.partitions import register_profile_shards
    from widen_dag.profiles import load_profile
    from widen_dag.progress import StageView

    profile = load_profile()
    register_profile_shards(dg.DagsterInstance.get(), profile)
    runs = _planned_runs(name, profile, reuse_base_models)
    view = StageView(console, live=live)
    for job, _, _, skip, stage in runs:
        for step in step_names(job()):
            if step not in skip:
                view.add(stage(step))
    ok = True
    with view:
        for i, (job, tags, label, skip, stage) in enumerate(runs):
            ok, _ = _execute(job, tags, label, seed, skip, view=view, stage=stage)
            if not ok:
                view.abandon([s(step) for job_, *_, s in runs[i:] for step in step_names(job_())])
                break
    return ok


def run_job(name: str, seed: int | None = None, reuse_base_models: bool = False, verbose: bool = False) -> bool:
    """Run a command's runs (`_planned_runs`) with a stage view on the console; Dagster's event
    log, warnings and the workers' output go to a log file in the Dagster home (and the UI).
    ``seed``: the run seed of every run (PipelineResource.seed). ``reuse_base_models``: the
    demo run leaves out policy_model and student_base, which must already be in the lake.
    ``verbose``: the event log on the console too, and plain stage lines among it."""
    from widen_dag.progress import captured_output

    home = init_home()
    start = time.perf_counter()
    log_file = home / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    print(f"widen-dag {name}: the event log goes to {log_file}" + ("" if verbose else " (--verbose: on the console too)"))
    with captured_output(log_file, echo=verbose) as console:
        ok = _run_planned(name, seed, reuse_base_models, console, live=False if verbose else None)
    if ok and name == "demo":
        print_ablation_table(home / "reports")
    print(f"\n{name}: {'SUCCESS' if ok else 'FAILURE'} in {time.perf_counter() - start:.0f}s")
    print(f"Event log: {log_file}")
    print(
        f"Runs are stored in {home}. Open the UI on them with:\n"
        f"  DAGSTER_HOME={home} .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000\n"
        f"then http://127.0.0.1:3000/runs (runs"
        + (f"; this one: http://127.0.0.1:3000/runs/{RUN_IDS[0]}" if len(RUN_IDS) == 1 else "")
        + ") and http://127.0.0.1:3000/assets/ablation_report (the table)"
    )
    if FAILED_STEPS:
        # The cause belongs at the end, not hundreds of log lines above the FAILURE line.
        print(f"\n{name}: FAILURE; {len(FAILED_STEPS)} step(s) failed (details in {log_file}):", file=sys.stderr)
        for line in FAILED_STEPS:
            print(f"  {line}", file=sys.stderr)
    return ok


def trace_command(args: argparse.Namespace) -> int:
    import json

    from widen_dag.launch.scaleout import deployment_lake_root
    from widen_dag.lineage.trace import TraceError, pair_picture, render, trace_checkpoint, trace_pair
    from widen_dag.profiles import load_profile
    from widen_dag.storage.lake import Lake, LakeError

    if args.png and not args.pair:
        print("widen-dag trace: --png draws a pair over its tree: give --pair PROBLEM_ID too", file=sys.stderr)
        return 2
    configured = args.lake or os.environ.get("WIDEN_DAG_LAKE")
    lake = Lake(deployment_lake_root(load_profile(None), configured, "--lake" if args.lake else "$WIDEN_DAG_LAKE"))
    try:
        report = trace_pair(lake, args.target, args.pair) if args.pair else trace_checkpoint(lake, args.target)
        if args.png:
            Path(args.png).write_bytes(pair_picture(lake, report).png)
    except (TraceError, LakeError, OSError) as err:
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
    from widen_dag.launch.memplan import PlanError, plan, pod_memory_gib, render
    from widen_dag.profiles import ProfileError, load_profile

    try:
        profile = load_profile(args.profile)
        host_gib = args.host_memory_gib if args.host_memory_gib is not None else pod_memory_gib(profile)
        rows = plan(profile, gpus=args.gpus, gpu_memory_gib=args.gpu_memory_gib, host_memory_gib=host_gib)
    except (ProfileError, PlanError) as err:
        print(f"widen-dag plan: {err}", file=sys.stderr)
        return 2
    print(f"profile {profile.name}")
    print(render(rows, args.gpu_memory_gib or profile.runtime.gpu_memory_gib, host_gib))
    if host_gib is not None:
        training = [p for s, p in rows if s in ("sft", "dpo")]
        verdict = "fits" if all(p.host is None or p.host.fits for p in training) else "does NOT fit"
        print(f"\ntraining (sft, dpo) host RAM {verdict} in {host_gib:g} GiB")
    failing = [p for _, p in rows if not p.fits]
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
        p.add_argument("--verbose", action="store_true", help="Dagster's event log on the console too (it always goes to a file)")
    sub.add_parser("init-home", help="write $DAGSTER_HOME/dagster.yaml")
    tr = sub.add_parser("trace", help="a checkpoint's data, pairs, tree nodes and problems")
    tr.add_argument("target", help="checkpoint name (sft, dpo-cdpo), asset (dpo_checkpoint:cdpo) or folder")
    tr.add_argument("--pair", metavar="PROBLEM_ID", help="show one preference pair node by node")
    tr.add_argument("--lake", help="lake root (default: $WIDEN_DAG_LAKE or ./lake)")
    tr.add_argument("--json", action="store_true", help="print JSON instead of text")
    tr.add_argument("--png", metavar="FILE", help="with --pair: draw the pair's search tree and both paths to FILE")
    pr = sub.add_parser("profile", help="show the resolved profile, explain every setting, or print the JSON schema")
    pr.add_argument("--profile", help="profile name or YAML path (default: $WIDEN_DAG_PROFILE or tiny)")
    pr.add_argument("--explain", action="store_true", help="every setting: dotted name, default and what it does")
    pr.add_argument("--schema", action="store_true", help="the profile's JSON schema")
    pl = sub.add_parser(
        "plan", help="GPU memory and host RAM per stage (on CPU: RAM and a time estimate); exits 1 when a stage does not fit"
    )
    pl.add_argument("--profile", help="profile name or YAML path (default: $WIDEN_DAG_PROFILE or tiny)")
    pl.add_argument("--gpus", type=int, help="GPUs per stage (default: what the profile asks for)")
    pl.add_argument("--gpu-memory-gib", type=float, help="memory of one GPU (default: runtime.gpu_memory_gib)")
    pl.add_argument(
        "--host-memory-gib", type=float, help="host (pod) memory for all ranks of a stage (default: runtime.k8s.memory, if set)"
    )
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
    return 0 if run_job(args.command, args.seed, args.reuse_base_models, args.verbose) else 1


if __name__ == "__main__":
    sys.exit(main())
