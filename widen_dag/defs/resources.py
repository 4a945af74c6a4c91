"""The one resource every asset shares: which profile, and where the lake is."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from widen_dag.lake import Lake, default_lake_root
from widen_dag.profiles import Profile, load_profile, profile_ref, with_run_seed


class PipelineResource(dg.ConfigurableResource):
    """Profile (name or YAML path; empty: $WIDEN_DAG_PROFILE or tiny), lake root URI, and the
    run seed of a multi-seed ablation (run config, so each seed's runs show it in the UI)."""

    profile: str = Field(default="", description="Profile name or YAML path; empty = $WIDEN_DAG_PROFILE or 'tiny'.")
    lake_root: str = Field(default="", description="Lake root URI; empty = $WIDEN_DAG_LAKE or ./lake.")
    seed: int | None = Field(default=None, description="Run seed: search, training, distillation data and evaluation "
                             "sampling seeds all become this (problems and base models stay); empty = the profile's.")

    def load_profile(self) -> Profile:
        return with_run_seed(load_profile(self.profile or None), self.seed)

    def lake(self) -> Lake:
        return Lake(self.lake_root or default_lake_root())

    def worker_extras(self) -> dict[str, str]:
        """What a Pipes worker needs to find the same profile and lake."""
        # the reference, not profile.name: a YAML profile outside the package is found by its path
        extras = {"profile": profile_ref(self.profile or None), "lake_root": self.lake().root}
        return extras if self.seed is None else {**extras, "seed": self.seed}
