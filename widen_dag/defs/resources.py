"""The one resource every asset shares: which profile, and where the lake is."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from widen_dag.profiles import Profile, load_profile, profile_to_json
from widen_dag.storage.lake import Lake, default_lake_root


class PipelineResource(dg.ConfigurableResource):
    """Profile (name or YAML path; empty: $WIDEN_DAG_PROFILE or tiny) and lake root URI."""

    profile: str = Field(default="", description="Profile name or YAML path; empty = $WIDEN_DAG_PROFILE or 'tiny'.")
    lake_root: str = Field(default="", description="Lake root URI; empty = $WIDEN_DAG_LAKE or ./lake.")

    def load_profile(self) -> Profile:
        return load_profile(self.profile or None)

    def lake(self) -> Lake:
        return Lake(self.lake_root or default_lake_root())

    def worker_extras(self, profile: Profile, lake_root: str | None = None) -> dict[str, str]:
        """What a Pipes worker (subprocess or pod) needs: the resolved profile itself, never a
        name to look up again (a YAML file on this machine does not exist in a pod), and the lake."""
        return {"profile_json": profile_to_json(profile), "lake_root": lake_root or self.lake().root}
