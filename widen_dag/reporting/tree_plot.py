"""A picture of one search tree (matplotlib PNG): nodes coloured by thought type, leaves marked
correct / wrong / no answer / cut off, and a preference pair's chosen and rejected paths drawn
over it. Used by `search_trees`' metadata and `widen-dag trace --pair ID --png`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from widen_dag.reporting.plots import figure_png, pyplot

# The thought types of SPEC section 1 in a fixed order, so a type keeps its colour in every picture.
THOUGHT_TYPES = ("root", "sub_task", "thinking", "hypothesis", "double_check", "reflection", "thinking_from_scratch", "answer")
PALETTE = ("#555555", "#1f77b4", "#17becf", "#9467bd", "#ff7f0e", "#e377c2", "#8c564b", "#bcbd22", "#7f7f7f", "#aec7e8")
# leaf outcome -> (marker, edge colour)
LEAF_MARKS = {"correct": ("*", "#2ca02c"), "wrong": ("X", "#d62728"), "no answer": ("s", "#000000"), "cut off": ("v", "#000000")}
PATH_COLOURS = {"chosen": "#2ca02c", "rejected": "#d62728"}


@dataclass
class TreePicture:
    """The PNG and what was drawn in it (for captions and tests)."""

    png: bytes
    nodes: int
    colours: dict[str, str]  # thought type -> colour of its nodes
    leaves: dict[str, int]  # leaf outcome -> how many
    paths: dict[str, int] = field(default_factory=dict)  # "chosen"/"rejected" -> edges highlighted


def leaf_outcome(node: dict[str, Any]) -> str | None:
    """How a leaf ended (the outline's marks in text form); None for an inner node."""
    if node["node_type"] == "answer":
        return "correct" if node.get("reward") == 1 else ("no answer" if node.get("no_answer") else "wrong")
    return "cut off" if node.get("is_terminal") else None


def type_colours(types: Sequence[str]) -> dict[str, str]:
    """A colour per thought type present, in THOUGHT_TYPES order (unknown types after them)."""
    order = list(THOUGHT_TYPES) + sorted(set(types) - set(THOUGHT_TYPES))
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(order) if t in types}


def _layout(nodes: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Leaves side by side in depth-first order, each parent above the middle of its children."""
    children: dict[str | None, list[str]] = {}
    for n in nodes:
        children.setdefault(n["parent_id"], []).append(n["node_id"])
    pos: dict[str, tuple[float, float]] = {}
    next_x = [0.0]

    def place(node_id: str, depth: int) -> float:
        kids = children.get(node_id, [])
        if kids:
            xs = [place(k, depth + 1) for k in kids]
            x = (xs[0] + xs[-1]) / 2
        else:
            x, next_x[0] = next_x[0], next_x[0] + 1
        pos[node_id] = (x, -depth)
        return x

    ids = {n["node_id"] for n in nodes}
    for root in [n["node_id"] for n in nodes if n["parent_id"] is None or n["parent_id"] not in ids]:
        place(root, 0)
    return pos


def tree_png(
    nodes: list[dict[str, Any]], title: str = "", chosen: Sequence[str] = (), rejected: Sequence[str] = ()
) -> TreePicture:
    """Draw one tree from its node rows (search_trees columns: node_id, parent_id, node_type,
    reward, no_answer, is_terminal). ``chosen`` / ``rejected``: a pair's node ids, root first."""
    if not nodes:
        raise ValueError("a tree picture needs at least one node")
    plt = pyplot()
    from matplotlib.lines import Line2D

    pos = _layout(nodes)
    colours = type_colours([n["node_type"] for n in nodes])
    parents = {n["parent_id"] for n in nodes}
    leaves = sum(1 for n in nodes if n["node_id"] not in parents)
    depth = max(-y for _, y in pos.values())
    fig, ax = plt.subplots(figsize=(min(18, max(6, 0.28 * leaves + 2)), min(10, max(3, 0.6 * depth + 1.8))), dpi=80)
    for n in nodes:
        if n["parent_id"] in pos:
            (x0, y0), (x1, y1) = pos[n["parent_id"]], pos[n["node_id"]]
            ax.plot([x0, x1], [y0, y1], color="#cccccc", lw=1, zorder=1)
    paths: dict[str, int] = {}
    for side, ids in (("chosen", chosen), ("rejected", rejected)):
        edges = [(a, b) for a, b in zip(ids, ids[1:], strict=False) if a in pos and b in pos]
        for a, b in edges:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            # over the shared prefix the rejected path runs thinner on top of the chosen one
            ax.plot([x0, x1], [y0, y1], color=PATH_COLOURS[side], lw=4 if side == "chosen" else 2, zorder=2, alpha=0.9)
        paths[side] = len(edges)
    for node_type, colour in colours.items():
        pts = [pos[n["node_id"]] for n in nodes if n["node_type"] == node_type and leaf_outcome(n) is None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=70, c=colour, edgecolors="white", linewidths=0.5, zorder=3)
    outcomes: dict[str, int] = {}
    for n in nodes:
        outcome = leaf_outcome(n)
        if outcome is None:
            continue
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        marker, edge = LEAF_MARKS[outcome]
        x, y = pos[n["node_id"]]
        ax.scatter([x], [y], s=170 if marker == "*" else 90, marker=marker, c=colours[n["node_type"]], edgecolors=edge, linewidths=1.5, zorder=4)  # fmt: skip
    handles = [Line2D([], [], marker="o", ls="", color=c, label=t) for t, c in colours.items()]
    handles += [
        Line2D(
            [],
            [],
            marker=LEAF_MARKS[o][0],
            ls="",
            color="white",
            markeredgecolor=LEAF_MARKS[o][1],
            markersize=9,
            label=f"{o} ({k})",
        )
        for o, k in outcomes.items()
    ]
    handles += [Line2D([], [], color=PATH_COLOURS[s], lw=3, label=f"{s} path") for s in paths if paths[s]]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("depth")
    ax.set_yticks(range(0, -depth - 1, -1), [str(d) for d in range(depth + 1)])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return TreePicture(figure_png(fig), len(nodes), colours, outcomes, paths)


def shard_tree_pictures(
    nodes: pl.DataFrame, trees: pl.DataFrame, pairs: pl.DataFrame | None = None
) -> list[tuple[str, TreePicture]]:
    """Pictures of a shard's first solved and first unsolved tree (by tree id), each with a
    caption. Where ``pairs`` (preference_pairs rows) hold a pair from a solved tree, the first
    such tree is shown instead, with the pair's chosen and rejected paths drawn over it."""
    paired = (
        pairs.filter(pl.col("tree_id").is_in(trees["tree_id"].implode())).sort("tree_id", "pairing")
        if pairs is not None
        else None
    )
    solved = trees.filter(pl.col("correct") > 0).sort("tree_id")
    unsolved = trees.filter(pl.col("correct") == 0).sort("tree_id")
    picks: list[tuple[str, str, dict[str, Any] | None]] = []
    if paired is not None and paired.height:
        pair = paired.row(0, named=True)
        picks.append((f"solved, with its {pair['pairing']} preference pair", pair["tree_id"], pair))
    elif solved.height:
        picks.append(("first solved", solved["tree_id"][0], None))
    if unsolved.height:
        picks.append(("first unsolved", unsolved["tree_id"][0], None))
    out = []
    for label, tree_id, pair in picks:
        rows = nodes.filter(pl.col("tree_id") == tree_id).to_dicts()
        chosen, rejected = (list(pair["chosen_node_ids"]), list(pair["rejected_node_ids"])) if pair else ((), ())
        out.append((f"{tree_id} ({label})", tree_png(rows, f"{tree_id}: {label}", chosen, rejected)))
    return out
