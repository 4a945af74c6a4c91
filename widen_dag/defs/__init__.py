"""The thin Dagster layer: assets, checks, jobs, schedules, sensors and resources.

Nothing outside this package imports dagster, and nothing here imports torch: heavy work is
launched in workers through Dagster Pipes.
"""

from __future__ import annotations

import dagster as dg
from widen_dag.defs.assets import datasets, environment, evaluation, models, problems, search, training
from widen_dag.defs.automation import SCHEDULES, SENSORS
from widen_dag.defs.jobs import JOBS
from widen_dag.defs.resources import PipelineResource


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules([problems, environment, models, search, datasets, training, evaluation]),
        asset_checks=dg.load_asset_checks_from_modules([datasets]),
        jobs=JOBS,
        sensors=SENSORS,
        schedules=SCHEDULES,
        resources={
            "pipeline": PipelineResource(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
    )
