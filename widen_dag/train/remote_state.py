"""Trainer step checkpoints kept on an object-store lake, so a pod that dies resumes elsewhere.

The Trainer writes ``checkpoint-<step>`` folders to a local scratch folder (it needs a local
path); after each save rank 0 uploads the new one through ``Lake.publish_folder`` (marker
last, so a killed upload is never taken for a checkpoint) and drops the older ones. Before
training, the newest published one is downloaded into the scratch folder, where
``train_resuming`` finds it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from widen_dag.storage.lake import Lake

_STEP = re.compile(r"^checkpoint-(\d+)$")


def published_steps(lake: Lake, parts: tuple[str, ...]) -> list[int]:
    """Steps with a completely uploaded Trainer checkpoint under ``parts``, oldest first."""
    steps = []
    for name in lake.children(*parts):
        m = _STEP.match(name)
        if m and lake.is_published(*parts, name):
            steps.append(int(m.group(1)))
    return sorted(steps)


def restore_latest(lake: Lake, parts: tuple[str, ...], local_dir: Path) -> int | None:
    """Download the newest complete Trainer checkpoint into ``local_dir``; its step, or None."""
    steps = published_steps(lake, parts)
    if not steps:
        return None
    lake.download_dir(*parts, f"checkpoint-{steps[-1]}", dest=local_dir / f"checkpoint-{steps[-1]}")
    return steps[-1]


def lake_sync_callback(lake: Lake, parts: tuple[str, ...]) -> Any:
    """A Trainer callback uploading each new step checkpoint (rank 0) and removing older ones."""
    from transformers import TrainerCallback

    class _Sync(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            name = f"checkpoint-{state.global_step}"
            lake.publish_folder(Path(args.output_dir) / name, *parts, name)
            for step in published_steps(lake, parts):
                if step != state.global_step:
                    lake.remove_dir(*parts, f"checkpoint-{step}")

    return _Sync()
