"""Failures that no retry can fix, recognised once, with their cause and the fix in one line.

A missing GPU, an unreachable or unknown hub model, or a file that does not exist fails the
same way on every retry, so retrying only costs minutes and buries the cause under logs. A
worker that dies of one writes ``{"cause", "fix"}`` to the file named in its Pipes extras
(``failure_file``); the Dagster layer then fails the step once (no retries) with that line.
"""

from __future__ import annotations

import json
from pathlib import Path

FAILURE_FILE_EXTRA = "failure_file"


class Unrecoverable(RuntimeError):
    """Raised where the cause is known up front (e.g. resolving a model before any work)."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(f"{cause}. Fix: {fix}")
        self.cause, self.fix = cause, fix


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def classify(err: BaseException) -> tuple[str, str] | None:
    """(cause, fix) for an error that a retry cannot fix, else None (let the retry policy act)."""
    for e in _chain(err):
        if isinstance(e, Unrecoverable):
            return e.cause, e.fix
        name, text = type(e).__name__, str(e)
        low = text.lower()
        if "cuda" in low and (
            "no cuda" in low or "not compiled with cuda" in low or "nvidia driver" in low or "sees no cuda device" in low
        ):
            return (
                f"no CUDA device: {text.splitlines()[0][:200]}",
                "set generation.device: cpu and train.device: cpu in the profile (or run on a GPU machine)",
            )
        if name in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            return (
                f"the HF hub has no such model or revision, or it is gated: {text.splitlines()[0][:200]}",
                "check models.<role>.name and revision; for a gated or private model set HF_TOKEN; "
                "or use source: path with a local folder",
            )
        if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or (
            "huggingface.co" in low and any(w in low for w in ("connection", "resolve", "timed out", "unreachable"))
        ):
            return (
                f"the HF hub is unreachable and the model is not in the local cache: {text.splitlines()[0][:200]}",
                "download the model where the hub is reachable and set HF_HUB_OFFLINE=1, or use source: path with a local folder",
            )
        if name == "ArtifactMissing":
            return text, "materialize the asset it names first"
        if isinstance(e, FileNotFoundError):
            return (
                f"file not found: {e.filename or text}",
                "check the path in the profile (relative paths are read from the working directory)",
            )
    return None


def write_failure(path: str | None, err: BaseException) -> tuple[str, str] | None:
    found = classify(err)
    if found and path:
        Path(path).write_text(json.dumps({"cause": found[0], "fix": found[1]}))
    return found


def read_failure(path: str) -> tuple[str, str] | None:
    p = Path(path)
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    return data["cause"], data["fix"]
