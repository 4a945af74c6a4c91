"""One search tree: typed-thought nodes with visit counts, UCT selection and backup.

Node ids are ``<tree_id>/<n>`` with n counting up from the root (0), so ids never repeat
within or across trees, and a tree rebuilt from its node table is the same tree.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from widen_dag.search.thoughts import ROOT

NODE_COLUMNS = (
    "tree_id",
    "problem_id",
    "node_id",
    "parent_id",
    "depth",
    "node_type",
    "model",
    "text",
    "n_tokens",
    "visits",
    "value_sum",
    "is_terminal",
    "reward",
    "answer",
    "no_answer",
    "finish_reason",
    "ended_by",
    "samples",
)
# How a node's text ended (``ended_by``): its closing tag, a configured stop string, the model's
# end of turn (EOS) after the thought, another type's closing tag (malformed), the token limit;
# reflections are fixed text. The first three close the node; the others end the path.
NODE_ENDS = ("tag", "stop_string", "eos", "foreign_tag", "length", "fixed")


@dataclass
class Node:
    index: int
    parent: int | None
    depth: int
    node_type: str
    model: str
    text: str
    n_tokens: int
    path_tokens: int
    visits: int = 0
    value_sum: float = 0.0
    is_terminal: bool = False
    reward: float | None = None
    answer: str | None = None
    no_answer: bool = False
    finish_reason: str = "stop"
    ended_by: str = ""
    samples: int = 1  # identical sibling samples merged into this node
    expanded: bool = False
    children: list[int] = field(default_factory=list)


class Tree:
    def __init__(self, tree_id: str, problem_id: str, domain: str, question: str, gold: str, seed: int) -> None:
        self.tree_id = tree_id
        self.problem_id = problem_id
        self.domain = domain
        self.question = question
        self.gold = gold
        self.rng = random.Random(seed)
        self.nodes: list[Node] = [Node(0, None, 0, ROOT, "", "", 0, 0)]
        self.rollouts = 0
        self.correct: set[int] = set()
        self.outcome: str | None = None

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def node_id(self, node: Node) -> str:
        return f"{self.tree_id}/{node.index}"

    def add_child(self, parent: Node, node_type: str, model: str, text: str, n_tokens: int, **fields: Any) -> Node:
        child = Node(
            len(self.nodes),
            parent.index,
            parent.depth + 1,
            node_type,
            model,
            text,
            n_tokens,
            parent.path_tokens + n_tokens,
            **fields,
        )
        self.nodes.append(child)
        parent.children.append(child.index)
        return child

    def ancestors(self, node: Node) -> list[Node]:
        """From the root's first child down to ``node`` (the root itself has no text)."""
        chain = []
        cur: Node | None = node
        while cur is not None and cur.parent is not None:
            chain.append(cur)
            cur = self.nodes[cur.parent]
        return chain[::-1]

    def path_text(self, node: Node) -> str:
        return "".join(n.text for n in self.ancestors(node))

    def uct_child(self, node: Node, c: float) -> Node:
        """Unvisited children first (in creation = action-graph order), else max UCT,
        ties broken by the tree's seeded random generator."""
        children = [self.nodes[i] for i in node.children]
        for child in children:
            if child.visits == 0:
                return child
        log_n = math.log(max(node.visits, 1))
        scores = [ch.value_sum / ch.visits + c * math.sqrt(2 * log_n / ch.visits) for ch in children]
        best = max(scores)
        ties = [ch for ch, s in zip(children, scores, strict=True) if math.isclose(s, best, rel_tol=0, abs_tol=1e-12)]
        return ties[0] if len(ties) == 1 else self.rng.choice(ties)

    def backprop(self, node: Node, reward: float) -> None:
        cur: Node | None = node
        while cur is not None:
            cur.visits += 1
            cur.value_sum += reward
            cur = self.nodes[cur.parent] if cur.parent is not None else None

    def reflection_parent(self, answer: Node) -> Node:
        """Nearest double_check ancestor of a wrong answer; fallback: the answer's parent."""
        cur = self.nodes[answer.parent] if answer.parent is not None else None
        while cur is not None and cur.parent is not None:
            if cur.node_type == "double_check":
                return cur
            cur = self.nodes[cur.parent]
        return self.nodes[answer.parent] if answer.parent is not None else self.root

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "tree_id": self.tree_id,
                "problem_id": self.problem_id,
                "node_id": self.node_id(n),
                "parent_id": None if n.parent is None else f"{self.tree_id}/{n.parent}",
                "depth": n.depth,
                "node_type": n.node_type,
                "model": n.model,
                "text": n.text,
                "n_tokens": n.n_tokens,
                "visits": n.visits,
                "value_sum": n.value_sum,
                "is_terminal": n.is_terminal,
                "reward": n.reward,
                "answer": n.answer,
                "no_answer": n.no_answer,
                "finish_reason": n.finish_reason,
                "ended_by": n.ended_by,
                "samples": n.samples,
            }
            for n in self.nodes
        ]


def render_markdown(rows: list[dict[str, Any]], max_nodes: int = 80, width: int = 100) -> str:
    """An indented outline of one tree's node table, for the Dagster UI."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    for r in rows:
        children.setdefault(r["parent_id"], []).append(r)
    lines: list[str] = []

    def walk(r: dict[str, Any], indent: int) -> None:
        if len(lines) >= max_nodes:
            return
        text = (r["text"] or "").replace("\n", " ").replace("`", "'")
        text = text if len(text) <= width else text[: width - 1] + "…"
        mark = ""
        if r["node_type"] == "answer":
            mark = " ✅" if r["reward"] == 1 else (" ∅ no answer" if r["no_answer"] else " ❌")
        elif r["is_terminal"]:
            mark = " ⛔ limit"
        label = "root" if r["node_type"] == "root" else f"**{r['node_type']}**"
        lines.append(f"{'  ' * indent}- {label} N={r['visits']} W={r['value_sum']:g}{mark} `{text}`")
        for ch in children.get(r["node_id"], []):
            walk(ch, indent + 1)

    for root in children.get(None, []):
        walk(root, 0)
    if len(rows) > max_nodes:
        lines.append(f"\n… {len(rows) - max_nodes} more nodes in the node table")
    return "\n".join(lines)
