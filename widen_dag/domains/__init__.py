"""Problem domains: each module has ``task_prompt``, ``normalize_gold`` and ``verify``.

Pure Python: nothing here imports Dagster or torch.
"""

from __future__ import annotations

from types import ModuleType

from widen_dag.domains import arithmetic, blocksworld, instruction_following, math
from widen_dag.domains.base import Verdict, problem_id

DOMAINS: dict[str, ModuleType] = {
    "math": math,
    "blocksworld": blocksworld,
    "arithmetic": arithmetic,
    "instruction_following": instruction_following,
}


def get_domain(name: str) -> ModuleType:
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r} (known: {', '.join(DOMAINS)})") from None


__all__ = ["DOMAINS", "Verdict", "get_domain", "problem_id"]
