"""The thin Dagster layer: assets, checks, jobs, schedules, sensors and resources.

Nothing outside this package imports dagster, and nothing here imports torch: heavy work is
launched in workers through Dagster Pipes.
"""

from __future__ import annotations

import dagster as dg

from widen_dag.defs.assets import datasets, decode, environment, evaluation, models, problems, search, training
from widen_dag.defs.automation import SCHEDULES, SENSORS
from widen_dag.defs.jobs import JOBS
from widen_dag.defs.resources import PipelineResource
from widen_dag.profiles import load_profile, profile_ref


def build_definitions(profile: str | None = None) -> dg.Definitions:
    """The code location for one profile, resolved here once (argument, ``$WIDEN_DAG_PROFILE``
    or tiny): the resource that every asset and worker reads and the DPO variant partitions
    both come from it."""
    ref = profile_ref(profile)
    resolved = load_profile(ref)
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules([problems, environment, models, search, datasets, training, evaluation, decode]),
            training.dpo_checkpoint_asset(resolved),
        ],
        asset_checks=dg.load_asset_checks_from_modules([datasets]),
        jobs=JOBS,
        sensors=SENSORS,
        schedules=SCHEDULES,
        resources={
            "pipeline": PipelineResource(profile=ref),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
    )
