"""What a rerun may reuse: per asset (and partition), the key of the inputs, configuration and
code it was last built from, its data version and its metadata.

An expensive stage (a bootstrapped model, a checkpoint, an evaluation) whose key is the same as
when its artifact was written, and whose artifact is still in the lake, need not run again:
the Dagster layer re-reports the recorded data version, so everything downstream sees
unchanged inputs too. Keys come from content (table hashes, upstream data versions), never
from timestamps, so a copied lake or a fresh Dagster home reuses as much as the lake holds.
Records live in the lake beside the artifacts (``_reuse/<asset>--<partition>.json``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from widen_dag.storage.lake import Lake

FOLDER = "_reuse"


@dataclass(frozen=True)
class ReuseRecord:
    key: str
    data_version: str
    inputs: dict[str, Any]
    config_hash: str
    code_version: str
    run_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def config_hash(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reuse_key(code_version: str, inputs: dict[str, Any], config: Any) -> str:
    return hashlib.sha256(
        json.dumps([code_version, inputs, config_hash(config)], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


def _path(lake: Lake, asset: str, partition: str | None) -> str:
    return lake.dir_path(FOLDER, f"{asset}--{partition or '__all__'}.json")


def read_record(lake: Lake, asset: str, partition: str | None = None) -> ReuseRecord | None:
    path = _path(lake, asset, partition)
    if not lake.fs.exists(path):
        return None
    with lake.fs.open(path, "rb") as fh:
        try:
            return ReuseRecord(**json.loads(fh.read().decode()))
        except (ValueError, TypeError):  # an unreadable record only costs a rebuild
            return None


def write_record(lake: Lake, asset: str, partition: str | None, record: ReuseRecord) -> None:
    lake.write_bytes(_path(lake, asset, partition), json.dumps(asdict(record), default=str).encode())


def recorded_version(lake: Lake, asset: str, partition: str | None = None) -> str | None:
    """The data version an upstream stage last wrote (None if it never ran against this lake)."""
    rec = read_record(lake, asset, partition)
    return rec.data_version if rec else None


def why_rebuild(
    previous: ReuseRecord | None, code_version: str, inputs: dict[str, Any], config: Any, artifact_present: bool
) -> list[str]:
    """Why a stage cannot be reused, one reason per line (empty: it can be)."""
    if previous is None:
        return ["never built against this lake"]
    reasons = []
    if not artifact_present:
        reasons.append("its artifact is no longer in the lake")
    if previous.code_version != code_version:
        reasons.append(f"code version {previous.code_version} -> {code_version}")
    if previous.config_hash != config_hash(config):
        reasons.append("configuration changed")
    for name in sorted(set(previous.inputs) | set(inputs)):
        if previous.inputs.get(name) != inputs.get(name):
            reasons.append(f"input {name} changed ({str(previous.inputs.get(name))[:12]} -> {str(inputs.get(name))[:12]})")
    return reasons
