"""The one resource every asset shares: which profile, and where the lake is."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from widen_dag.lake import Lake, default_lake_root
from widen_dag.profiles import Profile, load_profile, profile_ref


class PipelineResource(dg.ConfigurableResource):
    """Profile (name or YAML path; empty: $WIDEN_DAG_PROFILE or tiny) and lake root URI."""

    profile: str = Field(default="", description="Profile name or YAML path; empty = $WIDEN_DAG_PROFILE or 'tiny'.")
    lake_root: str = Field(default="", description="Lake root URI; empty = $WIDEN_DAG_LAKE or ./lake.")

    def load_profile(self) -> Profile:
        return load_profile(self.profile or None)

    def lake(self) -> Lake:
        return Lake(self.lake_root or default_lake_root())

    def worker_extras(self) -> dict[str, str]:
        """What a Pipes worker needs to find the same profile and lake."""
        # the reference, not profile.name: a YAML profile outside the package is found by its path
        return {"profile": profile_ref(self.profile or None), "lake_root": self.lake().root}
