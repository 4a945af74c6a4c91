"""One way to derive a seed from names and numbers, the same in every process and on every
machine (Python's ``hash()`` is salted per process)."""

from __future__ import annotations

import hashlib
from typing import Literal


def stable_seed(*parts: object, bits: int = 32, byteorder: Literal["big", "little"] = "big") -> int:
    """The first ``bits`` of SHA-256 over the ``:``-joined parts, as an integer.

    Callers that predate this helper pass their original width and byte order, so every
    seeded output (problems, splits, search samples, evaluation samples) stays bit-identical."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[: bits // 8], byteorder)


def stable_fraction(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (48 bits), e.g. for seeded splits."""
    return stable_seed(*parts, bits=48) / float(1 << 48)
