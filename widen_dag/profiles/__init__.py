"""Pipeline profiles: typed settings (``schema``) loaded from YAML (``loader``).

``tiny`` (embedded, CPU, no model hub) is the default; ``$WIDEN_DAG_PROFILE`` names another
profile or a path to a YAML file.
"""

from widen_dag.profiles.loader import (
    DEFAULT_PROFILE,
    PROFILE_DIR,
    PROFILE_ENV,
    available_profiles,
    explain,
    load_profile,
    parse_profile,
    profile_from_json,
    profile_ref,
    profile_to_json,
    with_run_seed,
)
from widen_dag.profiles.schema import (
    INBOX_DATASET,
    ArithmeticSource,
    BootstrapConfig,
    DatasetConfig,
    DomainName,
    FileSource,
    HubSource,
    K8sConfig,
    ModelRef,
    PlanBenchSource,
    ProblemsConfig,
    Profile,
    ProfileError,
    SearchConfig,
    SplitRole,
)

__all__ = [
    "DEFAULT_PROFILE",
    "INBOX_DATASET",
    "PROFILE_DIR",
    "PROFILE_ENV",
    "ArithmeticSource",
    "BootstrapConfig",
    "DatasetConfig",
    "DomainName",
    "FileSource",
    "HubSource",
    "K8sConfig",
    "ModelRef",
    "PlanBenchSource",
    "ProblemsConfig",
    "SearchConfig",
    "Profile",
    "ProfileError",
    "SplitRole",
    "available_profiles",
    "explain",
    "load_profile",
    "parse_profile",
    "profile_from_json",
    "profile_ref",
    "profile_to_json",
    "with_run_seed",
]
