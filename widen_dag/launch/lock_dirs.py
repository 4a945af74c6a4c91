"""The folders that hold a machine's lease lock files (GPU leases, CPU core shares).

A lease is an ``flock`` on a file in a folder every worker of the user on the machine agrees
on: ``$<env>`` or one folder per user in the system temp folder. In a shared /tmp another user
could create that folder first and hold the locks for ever, so a folder that another user owns
or can write is refused with what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_lock_dir(env: str, kind: str) -> Path:
    """``$env``, or ``<tmp>/widen_dag-<kind>-locks-<uid>``."""
    return Path(os.environ.get(env) or Path(tempfile.gettempdir()) / f"widen_dag-{kind}-locks-{os.getuid()}")


def own_lock_dir(folder: Path, env: str, what: str) -> Path:
    """Create ``folder`` private to this user and return it; refuse one that another user owns
    or can write."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(
            f"{what} lease folder {folder} belongs to another user or is writable by others: "
            f"remove it, or set ${env} to a folder of your own"
        )
    return folder
