"""Run a worker module the way Dagster Pipes does, without Dagster: the context and the
messages go through files (dagster_pipes' default file channel), so a test can launch the
real worker command (e.g. under ``accelerate launch``) and read back what it reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR, encode_param

from widen_dag.profiles import Profile, profile_to_json

REPO = Path(__file__).resolve().parents[1]


def pipes_env(folder: Path, profile: Profile, lake_root: str, asset: str, partition: str | None = None) -> tuple[dict, Path]:
    """Environment for one worker run, and the file its Pipes messages land in."""
    folder.mkdir(parents=True, exist_ok=True)
    context = {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": partition,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "test-run",
        "job_name": "test",
        "retry_number": 0,
        "extras": {"profile_json": profile_to_json(profile), "lake_root": lake_root},
    }
    ctx_file, messages = folder / "context.json", folder / "messages.jsonl"
    ctx_file.write_text(json.dumps(context))
    messages.unlink(missing_ok=True)
    env = {
        **os.environ,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"path": str(ctx_file)}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param({"path": str(messages)}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    return env, messages


def reports(messages: Path) -> list[dict]:
    """The ``report_asset_materialization`` messages a worker sent (metadata values unwrapped)."""
    out = []
    for line in messages.read_text().splitlines():
        msg = json.loads(line)
        if msg.get("method") == "report_asset_materialization":
            meta = msg["params"]["metadata"] or {}
            out.append({k: v.get("raw_value") if isinstance(v, dict) else v for k, v in meta.items()})
    return out
