"""Which profile a lake belongs to: one lake holds one profile's problems.

A lake remembers the profile that first wrote problems into it (``widen_dag_lake.json`` at
its root). Another profile writing problems there would mix two datasets' trees, pairs and
checkpoints under one name, so it is refused with one line, unless the user says the new
profile takes the lake over (``WIDEN_DAG_ADOPT_LAKE=1``): then the marker names the new
profile, and staging, which reads only the active profile's partitions, drops the old ones.
"""

from __future__ import annotations

import json
import os

from widen_dag.storage.lake import Lake

OWNER_FILE = "widen_dag_lake.json"
ADOPT_ENV = "WIDEN_DAG_ADOPT_LAKE"


class LakeOwnedByOtherProfile(RuntimeError):
    """This lake holds another profile's problems; the message says how to proceed."""


def lake_owner(lake: Lake) -> str | None:
    path = lake.dir_path(OWNER_FILE)
    if not lake.fs.exists(path):
        return None
    with lake.fs.open(path, "rb") as fh:
        return json.loads(fh.read().decode()).get("profile")


def adopt_requested() -> bool:
    return os.environ.get(ADOPT_ENV, "").strip().lower() in ("1", "true", "yes")


def claim_lake(lake: Lake, profile: str, *, adopt: bool | None = None) -> str | None:
    """Record ``profile`` as the lake's owner; refuse when another profile owns it. Returns
    the previous owner when the lake was taken over, else None."""
    owner = lake_owner(lake)
    if owner == profile:
        return None
    if owner is not None and not (adopt_requested() if adopt is None else adopt):
        raise LakeOwnedByOtherProfile(
            f"lake {lake.uri()} holds profile {owner!r}'s problems, not {profile!r}'s: use another lake "
            f"(WIDEN_DAG_LAKE) or set {ADOPT_ENV}=1 to let {profile!r} take this one over"
        )
    lake.write_bytes(lake.dir_path(OWNER_FILE), json.dumps({"profile": profile}).encode())
    return owner
