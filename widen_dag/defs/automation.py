"""Automation: the problem inbox, the profile's shards, the SQL tail's cron, the weekly retrain.

Nothing here starts a GPU stage on its own accord except the two explicit requests a user
switches on: search for a new inbox file, and a retrain when the training data changed.
"""

import hashlib
import json

import dagster as dg

from widen_dag.defs.assets.datasets import SQL_TAIL_CONDITION
from widen_dag.defs.jobs import dpo_variants_job, inbox_search_job, retrain_job
from widen_dag.defs.partitions import PROBLEM_SHARDS, missing_profile_shards
from widen_dag.defs.resources import PipelineResource
from widen_dag.domains.problems import inbox_files

RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00
# What the SFT checkpoint is trained on; a retrain is due when any of their versions moved.
RETRAIN_INPUTS = ("sft_dataset", "student_base")


def _fingerprint(stat) -> str:
    return f"{stat.st_size}-{stat.st_mtime_ns}"


@dg.sensor(
    job=inbox_search_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Watches the profile's inbox folder (profile `inbox.path` or $WIDEN_DAG_INBOX): each new "
    "problem file (.jsonl, .json array or .parquet, any case) becomes a `problem_shards` partition and one `inbox_search` run for exactly "
    "it; a file rewritten in place is searched again. Hidden files (a writer's name before its rename) wait.",
)
def problem_inbox(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    folder = pipeline.load_profile().inbox.resolved_path()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    files, refused = inbox_files(folder)
    for reason in refused:
        context.log.warning(f"inbox {folder}: {reason}")
    known = set(context.instance.get_dynamic_partitions(PROBLEM_SHARDS))
    new_keys, requests, cursor = [], [], dict(seen)
    for key, path in files:
        fingerprint = _fingerprint(path.stat())
        if seen.get(path.name) == fingerprint:
            continue
        cursor[path.name] = fingerprint
        if key not in known:
            new_keys.append(key)
        requests.append(
            dg.RunRequest(run_key=f"{key}@{fingerprint}", partition_key=key, tags={"widen_dag/inbox_file": str(path)})
        )
    if not requests:
        why = f"no new problem files in {folder}" + (f"; {len(refused)} refused: {'; '.join(refused[:3])}" if refused else "")
        return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=json.dumps(cursor, sort_keys=True))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[problem_shards_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )


def problem_shards_request(keys: list[str]) -> dg.AddDynamicPartitionsRequest:
    return dg.AddDynamicPartitionsRequest(partitions_def_name=PROBLEM_SHARDS, partition_keys=keys)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers the active profile's dataset shards as `problem_shards` partitions, so the UI can "
    "materialize them. Adds partitions only; requests no runs.",
)
def profile_shards(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    missing = missing_profile_shards(context.instance, pipeline.load_profile())
    if not missing:
        return dg.SensorResult(skip_reason=dg.SkipReason("every profile shard is registered"))
    return dg.SensorResult(dynamic_partitions_requests=[problem_shards_request(missing)])


sql_tail_automation = dg.AutomationConditionSensorDefinition(
    "sql_tail_automation",
    target=dg.AssetSelection.all().materializable(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description=f"Evaluates the assets' automation conditions: the token lengths and SQL models refresh "
    f"{SQL_TAIL_CONDITION.get_label()}. No GPU asset has a condition.",
)


def _latest_materialization(instance: dg.DagsterInstance, asset: str):
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event.asset_materialization if event else None


def retrain_inputs_changed(instance: dg.DagsterInstance) -> tuple[bool, dict[str, str]]:
    """(due, {input: its current data version}): due when there is no SFT checkpoint yet, or
    the data version of any input differs from the one the last checkpoint was trained on."""
    current = {}
    for name in RETRAIN_INPUTS:
        mat = _latest_materialization(instance, name)
        if mat is None:
            return False, {}
        current[name] = mat.tags.get("dagster/data_version", "")
    checkpoint = _latest_materialization(instance, "sft_checkpoint")
    if checkpoint is None:
        return True, current
    provenance = dg.DataProvenance.from_tags(checkpoint.tags)
    trained_on = {k.to_user_string(): v.value for k, v in provenance.input_data_versions.items()} if provenance else {}
    return any(trained_on.get(name) != version for name, version in current.items()), current


@dg.schedule(
    cron_schedule=RETRAIN_CRON,
    job=retrain_job,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly SFT retrain, requested only when the data versions of the SFT set or the student base "
    "differ from those the current checkpoint was trained on.",
)
def weekly_retrain(context: dg.ScheduleEvaluationContext):
    due, versions = retrain_inputs_changed(context.instance)
    if not versions:
        return dg.SkipReason(f"nothing to train on yet: materialize {' and '.join(RETRAIN_INPUTS)} first")
    if not due:
        return dg.SkipReason("the training data's versions are those of the current checkpoint")
    digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
    return dg.RunRequest(run_key=f"retrain-{digest}", tags={f"widen_dag/version/{k}": v[:63] for k, v in versions.items()})


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[retrain_job],
    request_job=dpo_variants_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="After a successful retrain, one `dpo_variants` run per ablation variant (pool `gpu` runs them one at a time).",
)
def dpo_after_retrain(context: dg.RunStatusSensorContext, pipeline: PipelineResource):
    run_id = context.dagster_run.run_id
    return [
        dg.RunRequest(run_key=f"{run_id}-{variant}", partition_key=variant)
        for variant in pipeline.load_profile().train.dpo.variants
    ]


SENSORS = [problem_inbox, profile_shards, sql_tail_automation, dpo_after_retrain]
SCHEDULES = [weekly_retrain]
