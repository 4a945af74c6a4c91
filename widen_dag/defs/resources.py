"""The one resource every asset shares: which profile, and where the lake is."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from widen_dag.launch.scaleout import deployment_lake_root
from widen_dag.profiles import Profile, load_profile, profile_to_json, with_run_seed
from widen_dag.storage.lake import Lake


class PipelineResource(dg.ConfigurableResource):
    """Profile (name or YAML path; empty: $WIDEN_DAG_PROFILE or tiny), lake root URI, and the
    run seed of a multi-seed ablation (run config, so each seed's runs show it in the UI)."""

    profile: str = Field(default="", description="Profile name or YAML path; empty = $WIDEN_DAG_PROFILE or 'tiny'.")
    lake_root: str = Field(
        default="",
        description="Lake root URI; empty = $WIDEN_DAG_LAKE, else a k8s profile's runtime.k8s.lake_root, else ./lake.",
    )
    seed: int | None = Field(
        default=None,
        description="Run seed: search, training, distillation data and evaluation "
        "sampling seeds all become this (problems and base models stay); empty = the profile's.",
    )

    def load_profile(self) -> Profile:
        profile = with_run_seed(load_profile(self.profile or None), self.seed)
        self.lake_uri(profile)  # a k8s profile whose pods' lake is not Dagster's fails here, before any stage
        return profile

    def lake_uri(self, profile: Profile | None = None) -> str:
        """The one lake of a deployment: Dagster reads it and every worker (subprocess or pod) is
        handed it; a k8s profile's ``runtime.k8s.lake_root`` when neither this resource's
        ``lake_root`` nor ``$WIDEN_DAG_LAKE`` is set, and refused when they name another
        (widen_dag.launch.scaleout.deployment_lake_root)."""
        if profile is None:
            profile = with_run_seed(load_profile(self.profile or None), self.seed)
        source = "the resource's lake_root" if self.lake_root else "$WIDEN_DAG_LAKE"
        return deployment_lake_root(profile, self.lake_root or os.environ.get("WIDEN_DAG_LAKE"), source)

    def lake(self) -> Lake:
        return Lake(self.lake_uri())

    def worker_extras(self, profile: Profile) -> dict[str, str]:
        """What a Pipes worker (subprocess or pod) needs: the resolved profile itself (run seed
        applied), never a name to look up again (a YAML file here does not exist in a pod), and the lake."""
        return {"profile_json": profile_to_json(profile), "lake_root": self.lake_uri(profile)}
