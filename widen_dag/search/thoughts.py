"""Typed thoughts (SPEC.md section 1): node types, their tags and prefill phrases.

One place for the node format, shared by the search, the tiny models' training texts and
the dataset exports, so that all of them write and read exactly the same tags.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from widen_dag.profiles.schema import DEFAULT_PREFILLS, DEFAULT_REFLECTION_TEXT, NODE_TYPES

ROOT = "root"

TAGS = {
    "sub_task": "sub-task",
    "thinking": "thinking",
    "hypothesis": "hypothesis",
    "double_check": "double-check",
    "reflection": "reflection",
    "thinking_from_scratch": "thinking_from_scratch",
    "answer": "answer",
}

# The default prefill phrases per node type and the reflection sentence live with the
# profile schema (their defaults); a profile's ``search.prefills`` / ``search.reflection_text``
# replace them (Marco-o1 v2 keeps them per node type in its action config).
PREFILLS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in DEFAULT_PREFILLS.items()}

# `reflection` needs no model call: its text is this fixed sentence.
REFLECTION_TEXT = DEFAULT_REFLECTION_TEXT


def open_tag(node_type: str) -> str:
    return f"<{TAGS[node_type]}>"


def close_tag(node_type: str) -> str:
    return f"</{TAGS[node_type]}>"


def all_tag_strings() -> list[str]:
    return [t for nt in NODE_TYPES for t in (open_tag(nt), close_tag(nt))]


def wrap(node_type: str, body: str) -> str:
    """The node's full text as it appears in a path: ``<tag>body</tag>``."""
    return f"{open_tag(node_type)}{body}{close_tag(node_type)}"


def choose_prefill(
    node_type: str,
    rng: random.Random,
    prefills: Mapping[str, Sequence[str]] | None = None,
    reflection_text: str = REFLECTION_TEXT,
) -> str:
    """A prefill phrase for ``node_type`` from ``prefills`` (default: PREFILLS)."""
    if node_type == "reflection":
        return reflection_text
    return rng.choice(list((prefills or PREFILLS)[node_type]))


_TAG_RE = re.compile(rf"<({'|'.join(re.escape(TAGS[t]) for t in NODE_TYPES)})>(.*?)</\1>", re.DOTALL)


def is_well_formed(text: str) -> bool:
    """Every thought tag closed in order, nothing outside tags, and a final <answer> block.

    The answer check is syntactic (a block exists and is closed); whether it holds an
    extractable answer is the domain's business.
    """
    pos = 0
    last = None
    for m in _TAG_RE.finditer(text):
        if text[pos : m.start()].strip():
            return False
        pos, last = m.end(), m.group(1)
    return last == TAGS["answer"] and not text[pos:].strip()
