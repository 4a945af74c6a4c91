"""MCTS over typed thoughts (SPEC.md section 1), as rollouts that yield their expansions.

A rollout is a generator: it descends by UCT and, at the first unexpanded node, yields the
generation requests for all of that node's children (one request per child type, n samples
each) and receives the samples back. Written this way, one tree can run alone or many
trees can advance in lock-step (widen_dag.search.lockstep) with the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from widen_dag.domains import get_domain
from widen_dag.llm.base import GenerationRequest, Sample
from widen_dag.profiles import SearchConfig
from widen_dag.search.thoughts import NODE_TYPES, choose_prefill, close_tag, open_tag, wrap
from widen_dag.search.tree import Node, Tree
from widen_dag.seeding import stable_seed


@dataclass(frozen=True)
class Expansion:
    """Requests for one node's children, and the model role each goes to."""

    node: Node
    child_types: list[str]
    prefills: list[str]
    roles: list[str]
    requests: list[GenerationRequest]


@dataclass(frozen=True)
class SearchContext:
    cfg: SearchConfig
    chat_prompt: Callable[[str], str]  # user turn -> prompt text up to the assistant turn
    count_tokens: Callable[[list[str]], list[int]]
    temperature: float
    top_p: float
    max_tokens_per_node: int
    has_critic: bool
    seed: int
    # The critic's own chat template and tokenizer (a critic is a different model: its prompt
    # must be in its template, its nodes counted in its tokens). None: the policy's.
    critic_chat_prompt: Callable[[str], str] | None = None
    critic_count_tokens: Callable[[list[str]], list[int]] | None = None

    def prompt_for(self, role: str) -> Callable[[str], str]:
        return self.critic_chat_prompt if role == "critic" and self.critic_chat_prompt else self.chat_prompt

    def counter_for(self, role: str) -> Callable[[list[str]], list[int]]:
        return self.critic_count_tokens if role == "critic" and self.critic_count_tokens else self.count_tokens


def request_seed(seed: int, tree_id: str, node_index: int, child_type: str) -> int:
    """A per-request sampling seed: the same node gets the same samples in any batch."""
    return stable_seed(seed, tree_id, node_index, child_type, byteorder="little") & 0x7FFFFFFF


def stop_strings(node_type: str, extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The node's closing tag first; any other closing tag also stops it (a malformed node
    that then ends as a no-answer), instead of running on to the token limit; then the
    profile's extra stop strings for this type (``search.stop_strings``)."""
    own = close_tag(node_type)
    return (own, *(close_tag(t) for t in NODE_TYPES if close_tag(t) != own), *extra)


def node_ending(node_type: str, text: str, finish_reason: str, extra_stops: tuple[str, ...] | list[str] = ()) -> tuple[str, str]:
    """(how the generated ``text`` ended, the text of a closed thought without its closing tag).

    A thought is complete when it ends with its closing tag, with one of the type's extra stop
    strings, or when the model ended its turn (EOS: finish reason "stop" with no stop string
    in the text) as real instruct models do after ``\\boxed{18}``. Another type's closing tag
    (returned without that tag) closes it only where the search allows
    (``search.foreign_tag_ends_thought``); the token limit cuts it off: a path ending there is a
    no-answer.
    """
    own = close_tag(node_type)
    if text.endswith(own):
        return "tag", text[: -len(own)]
    for stop in extra_stops:
        if text.endswith(stop):
            return "stop_string", text[: -len(stop)].rstrip()
    for other in NODE_TYPES:
        if text.endswith(close_tag(other)):
            return "foreign_tag", text[: -len(close_tag(other))]
    if finish_reason == "stop":
        return "eos", text.rstrip()
    return "length", text


def plan_expansion(tree: Tree, node: Node, ctx: SearchContext) -> Expansion | None:
    """Requests for all children of ``node``, or None when it is a dead end (limits, no children)."""
    cfg = ctx.cfg
    graph = cfg.action_graph.get(node.node_type, {})
    if not graph or node.depth >= cfg.max_depth or node.path_tokens >= cfg.max_path_tokens:
        return None
    domain = get_domain(tree.domain)
    user = domain.task_prompt(tree.question)
    path = tree.path_text(node)
    budget = max(1, min(ctx.max_tokens_per_node, cfg.max_path_tokens - node.path_tokens))
    child_types, prefills, roles, requests = [], [], [], []
    for child_type, count in graph.items():
        if child_type == "reflection":
            continue  # reflections are fixed text, added on wrong answers
        prefill = choose_prefill(child_type, tree.rng, cfg.prefills)
        role = "critic" if ctx.has_critic and child_type in cfg.critic_node_types else "policy"
        child_types.append(child_type)
        prefills.append(prefill)
        roles.append(role)
        requests.append(
            GenerationRequest(
                prompt=ctx.prompt_for(role)(user) + path + open_tag(child_type) + prefill,
                n=count,
                temperature=ctx.temperature,
                top_p=ctx.top_p,
                max_tokens=budget,
                stop=stop_strings(child_type, cfg.stop_strings.get(child_type, ())),
                include_stop=True,
                seed=request_seed(ctx.seed, tree.tree_id, node.index, child_type),
            )
        )
    if not requests:
        return None
    return Expansion(node, child_types, prefills, roles, requests)


def apply_expansion(tree: Tree, exp: Expansion, results: list[list[Sample]], ctx: SearchContext) -> None:
    """Create the children from the samples; answers are verified as they are created.

    Identical sibling samples (a model at low temperature repeats itself) become one node
    with a ``samples`` count, so the tree holds no textual twins and every path differs in
    text from its siblings where it differs in node ids.
    """
    domain = get_domain(tree.domain)
    extra = ctx.cfg.stop_strings
    merged: list[dict] = []
    for child_type, prefill, role, samples in zip(exp.child_types, exp.prefills, exp.roles, results, strict=True):
        seen: dict[str, dict] = {}
        for s in samples:
            ended_by, content = node_ending(child_type, s.text, s.finish_reason, extra.get(child_type, ()))
            closed = (
                ended_by in ("tag", "stop_string")
                or (ended_by == "eos" and ctx.cfg.eos_ends_thought)
                # a real chat model copies the previous node's closing tag ("The answer is: 2</double-check>")
                or (ended_by == "foreign_tag" and ctx.cfg.foreign_tag_ends_thought)
            )
            if not closed:
                content = s.text  # kept as the model left it
            # A closed thought is stored with its closing tag, however it ended, so every path
            # reads as well-formed tagged thoughts; an open one is kept as the model left it.
            body = open_tag(child_type) + prefill + content + (close_tag(child_type) if closed else "")
            if ctx.cfg.merge_identical_siblings and body in seen:
                seen[body]["samples"] += 1
                continue
            seen[body] = {
                "type": child_type,
                "role": role,
                "body": body,
                "closed": closed,
                "ended_by": ended_by,
                "finish_reason": s.finish_reason,
                "samples": 1,
            }
            merged.append(seen[body])
    counts: list[int] = [0] * len(merged)
    for role in {m["role"] for m in merged}:
        idx = [i for i, m in enumerate(merged) if m["role"] == role]
        for i, n in zip(idx, ctx.counter_for(role)([merged[i]["body"] for i in idx]), strict=True):
            counts[i] = n
    for m, n_tok in zip(merged, counts, strict=True):
        child = tree.add_child(
            exp.node,
            m["type"],
            m["role"],
            m["body"],
            n_tok,
            finish_reason=m["finish_reason"],
            ended_by=m["ended_by"],
            samples=m["samples"],
        )
        over = child.path_tokens > ctx.cfg.max_path_tokens
        if not m["closed"] or over:
            # Cut off by the node's or the path's token budget, or malformed: the path ends as a no-answer.
            child.is_terminal, child.no_answer, child.reward = True, True, 0.0
        elif m["type"] == "answer":
            # The body is a closed <answer> block: a dataset's answer_fallback never applies to it.
            verdict = domain.verify(m["body"], tree.gold, tree.question)
            child.is_terminal = True
            child.reward = verdict.reward
            child.answer = verdict.answer
            child.no_answer = verdict.no_answer
    exp.node.expanded = True


def rollout(tree: Tree, ctx: SearchContext) -> Generator[Expansion, list[list[Sample]], None]:
    """One rollout: descend, expanding as needed, until a terminal node; then back up."""
    node = tree.root
    while not node.is_terminal:
        if not node.expanded:
            exp = plan_expansion(tree, node, ctx)
            if exp is None:
                node.is_terminal, node.no_answer, node.reward = True, True, 0.0
                break
            results = yield exp
            apply_expansion(tree, exp, results, ctx)
        node = tree.uct_child(node, ctx.cfg.exploration_c)
    reward = node.reward or 0.0
    tree.backprop(node, reward)
    tree.rollouts += 1
    if reward == 1.0:
        tree.correct.add(node.index)
    elif node.node_type == "answer":
        parent = tree.reflection_parent(node)
        # One reflection per check: a second wrong answer below it adds nothing new.
        if not any(tree.nodes[i].node_type == "reflection" for i in parent.children):
            text = wrap("reflection", ctx.cfg.reflection_text)
            refl = tree.add_child(parent, "reflection", "fixed", text, ctx.count_tokens([text])[0], ended_by="fixed")
            if refl.path_tokens >= ctx.cfg.max_path_tokens:
                refl.is_terminal, refl.no_answer, refl.reward = True, True, 0.0


def stop_reason(tree: Tree, cfg: SearchConfig) -> str | None:
    """Why this tree is done, or None to keep searching.

    solved: k_max correct answers, or R rollouts with at least k_min; budget: give up after
    give_up_factor * R rollouts with some correct but fewer than k_min; failed: none correct.
    """
    found = len(tree.correct)
    if found >= cfg.k_max:
        return "solved"
    if tree.rollouts >= cfg.rollouts and found >= cfg.k_min:
        return "solved"
    if tree.rollouts >= cfg.give_up_factor * cfg.rollouts:
        return "budget" if found else "failed"
    if tree.root.is_terminal:
        return "budget" if found else "failed"
    return None
