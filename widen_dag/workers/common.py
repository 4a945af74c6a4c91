"""What every worker does first: open the Pipes channel, load the same profile and lake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from dagster_pipes import PipesContext, open_dagster_pipes

from widen_dag.lake import Lake
from widen_dag.profiles import Profile, load_profile


@dataclass
class Worker:
    pipes: PipesContext
    profile: Profile
    lake: Lake

    def log(self, message: str) -> None:
        self.pipes.log.info(message)


@contextlib.contextmanager
def open_worker() -> Iterator[Worker]:
    """Pipes context + the profile and lake named in the launching asset's extras."""
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        yield Worker(pipes, load_profile(extras.get("profile")), Lake(extras["lake_root"]))
