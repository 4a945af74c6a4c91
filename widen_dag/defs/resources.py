"""The one resource every asset shares: which profile, and where the lake is."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from widen_dag.profiles import Profile, load_profile, profile_to_json, with_run_seed
from widen_dag.storage.lake import Lake, default_lake_root


class PipelineResource(dg.ConfigurableResource):
    """Profile (name or YAML path; empty: $WIDEN_DAG_PROFILE or tiny), lake root URI, and the
    run seed of a multi-seed ablation (run config, so each seed's runs show it in the UI)."""

    profile: str = Field(default="", description="Profile name or YAML path; empty = $WIDEN_DAG_PROFILE or 'tiny'.")
    lake_root: str = Field(default="", description="Lake root URI; empty = $WIDEN_DAG_LAKE or ./lake.")
    seed: int | None = Field(
        default=None,
        description="Run seed: search, training, distillation data and evaluation "
        "sampling seeds all become this (problems and base models stay); empty = the profile's.",
    )

    def load_profile(self) -> Profile:
        return with_run_seed(load_profile(self.profile or None), self.seed)

    def lake(self) -> Lake:
        return Lake(self.lake_root or default_lake_root())

    def worker_extras(self, profile: Profile, lake_root: str | None = None) -> dict[str, str]:
        """What a Pipes worker (subprocess or pod) needs: the resolved profile itself (run seed
        applied), never a name to look up again (a YAML file here does not exist in a pod), and the lake."""
        return {"profile_json": profile_to_json(profile), "lake_root": lake_root or self.lake().root}
