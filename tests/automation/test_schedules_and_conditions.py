"""The weekly retrain schedule, the DPO follow-up sensor, and the SQL tail's automation condition."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from widen_dag.defs import build_definitions
from widen_dag.defs.assets.datasets import SQL_TAIL_CONDITION
from widen_dag.defs.automation import dpo_after_retrain, weekly_retrain
from widen_dag.defs.resources import PipelineResource


def _stand_ins(versions: dict[str, str]) -> list[dg.AssetsDefinition]:
    """Assets with the real keys and dependencies whose data versions the test sets, so the
    schedule reads provenance exactly as Dagster records it."""

    def versioned(name: str):
        @dg.asset(name=name)
        def _asset() -> dg.MaterializeResult:
            return dg.MaterializeResult(data_version=dg.DataVersion(versions[name]))

        return _asset

    @dg.asset(name="sft_checkpoint", deps=["sft_dataset", "student_base"], code_version="test")
    def _checkpoint() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    return [versioned("sft_dataset"), versioned("student_base"), _checkpoint]


def _tick(instance):
    return weekly_retrain(dg.build_schedule_context(instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 30, 3)))


def test_weekly_retrain_skips_until_there_is_data_then_runs_only_when_its_versions_change():
    with dg.instance_for_test() as instance:
        _retrain_story(instance)


def _retrain_story(instance) -> None:
    assert "nothing to train on yet" in _tick(instance).skip_message

    versions = {"sft_dataset": "aaa", "student_base": "s1"}
    assets = _stand_ins(versions)
    dg.materialize(assets[:2], instance=instance)
    first = _tick(instance)  # data but no checkpoint yet
    assert isinstance(first, dg.RunRequest) and first.tags["widen_dag/version/sft_dataset"] == "aaa"

    dg.materialize(assets, instance=instance, selection=["sft_checkpoint"])
    assert "versions are those of the current checkpoint" in _tick(instance).skip_message

    versions["sft_dataset"] = "bbb"  # new trees -> a new SFT set
    dg.materialize(assets, instance=instance, selection=["sft_dataset"])
    second = _tick(instance)
    assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key

    dg.materialize(assets, instance=instance, selection=["sft_checkpoint"])
    versions["student_base"] = "s1"  # rematerialized with the same content: same version, no retrain
    dg.materialize(assets, instance=instance, selection=["student_base"])
    assert isinstance(_tick(instance), dg.SkipReason)


def test_a_successful_retrain_requests_every_dpo_variant():
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(_stand_ins({"sft_dataset": "a", "student_base": "b"}), instance=instance)
    ctx = dg.build_run_status_sensor_context(
        sensor_name="dpo_after_retrain",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_success_event(),
        resources={"pipeline": PipelineResource(profile="tiny")},
    )
    requests = dpo_after_retrain(ctx)
    assert [r.partition_key for r in requests] == ["dpo", "balanced", "cdpo", "joint", "joint_masked"]
    assert len({r.run_key for r in requests}) == 5


def test_only_the_cheap_tail_has_an_automation_condition():
    graph = build_definitions().resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None}
    assert automated == {"node_lengths", "tree_paths", "path_stats", "length_profile", "sft_dataset", "preference_pairs"}


def _tail_stand_ins() -> list[dg.AssetsDefinition]:
    @dg.asset(name="search_trees")
    def trees() -> None: ...

    @dg.asset(name="student_base")
    def student() -> None: ...

    @dg.asset(name="node_lengths", deps=["search_trees", "student_base"], automation_condition=SQL_TAIL_CONDITION)
    def lengths() -> None: ...

    @dg.asset(name="tree_paths", deps=["search_trees", "node_lengths"], automation_condition=SQL_TAIL_CONDITION)
    def paths() -> None: ...

    return [trees, student, lengths, paths]


def _requested(result) -> set[str]:
    return {r.key.to_user_string() for r in result.results if r.true_subset.size}


def _run(defs: dg.Definitions, instance, keys: list[str]) -> None:
    """A run that targets ``keys``, like one the automation sensor launches (dg.materialize's
    runs record no asset selection, which the condition reads)."""
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(k) for k in keys]).success


def test_sql_tail_refreshes_once_per_cron_tick_after_new_trees_only():
    defs = dg.Definitions(assets=_tail_stand_ins())
    instance = dg.DagsterInstance.ephemeral()
    _run(defs, instance, ["search_trees", "student_base", "node_lengths", "tree_paths"])  # all exist at 09:50
    t = dt.datetime(2026, 11, 30, 9, 50, tzinfo=dt.UTC)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=t)
    cursor = result.cursor

    # The 10:00 tick passes with no new trees: nothing to refresh.
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=cursor, evaluation_time=t + dt.timedelta(minutes=15)
    )
    assert _requested(result) == set()
    cursor = result.cursor

    # New trees land at 10:20: the whole tail (lengths, then paths) is requested at once...
    _run(defs, instance, ["search_trees"])
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=cursor, evaluation_time=t + dt.timedelta(minutes=30)
    )
    assert _requested(result) == {"node_lengths", "tree_paths"}
    cursor = result.cursor

    # ...and only once per tick, even if more trees land before 11:00.
    _run(defs, instance, ["node_lengths", "tree_paths"])
    _run(defs, instance, ["search_trees"])
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=cursor, evaluation_time=t + dt.timedelta(minutes=40)
    )
    assert _requested(result) == set()
    # The trees that landed after the 10:30 request are not forgotten: refreshed after 11:00.
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=result.cursor, evaluation_time=t + dt.timedelta(minutes=75)
    )
    assert _requested(result) == {"node_lengths", "tree_paths"}

    # Refreshed, nothing new: the 12:00 tick requests nothing.
    _run(defs, instance, ["node_lengths", "tree_paths"])
    for minutes in (85, 135):
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor, evaluation_time=t + dt.timedelta(minutes=minutes)
        )
        assert _requested(result) == set(), minutes
