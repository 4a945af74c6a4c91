"""How the search reads what a real instruct model writes: EOS-ended thoughts, extra stop
strings, identical sibling samples, prefills from the profile, and the critic's own chat
template and token counts."""

from __future__ import annotations

import pytest

from tests.search.fake_backend import _LAST_OPEN, search_context
from widen_dag.llm.base import EngineStats, GenerationRequest, Sample
from widen_dag.profiles import SearchConfig
from widen_dag.search.mcts import SearchContext, apply_expansion, node_ending, plan_expansion
from widen_dag.search.thoughts import is_well_formed
from widen_dag.search.tree import Tree


class ScriptedBackend:
    """Answers each request with fixed (text, finish_reason) samples per node tag."""

    name = "scripted"

    def __init__(
        self,
        script: dict[str, list[tuple[str, str]]],
        template: str = "<|user|>{u}<|end|><|assistant|>",
        chars_per_token: int = 4,
    ) -> None:
        self.script = script
        self.template = template
        self.chars_per_token = chars_per_token
        self.prompts: list[str] = []
        self.stats = EngineStats()
        self.model_name = template

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return self.template.format(u=user) + assistant_prefix

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [max(1, len(t) // self.chars_per_token) for t in texts]

    def generate(self, requests: list[GenerationRequest]) -> list[list[Sample]]:
        out = []
        for r in requests:
            self.prompts.append(r.prompt or "")
            tag = _LAST_OPEN.search(r.prompt or "").group(1)
            samples = self.script[tag]
            out.append([Sample(t, len(t) // 4 + 1, -1.0, fr) for t, fr in (samples * r.n)[: r.n]])
        return out

    def close(self) -> None:
        pass


def _ctx(policy, critic=None, **cfg) -> SearchContext:
    return search_context(policy, SearchConfig(**cfg), critic, seed=3)


def _expand(tree, node, ctx, backends):
    exp = plan_expansion(tree, node, ctx)
    results = [backends[role].generate([req])[0] for role, req in zip(exp.roles, exp.requests, strict=True)]
    apply_expansion(tree, exp, results, ctx)
    return [tree.nodes[i] for i in node.children]


def test_an_answer_node_ended_by_eos_is_verified_and_stored_closed():
    # Qwen writes the boxed answer and ends its turn: finish reason "stop", no closing tag.
    backend = ScriptedBackend({"answer": [(" \\boxed{18}", "stop"), (" 17", "stop")]})
    tree = Tree("t", "p", "math", "What is 9 + 9?", "18", seed=0)
    cfg = {"action_graph": {"root": {"answer": 2}}}
    kids = _expand(tree, tree.root, _ctx(backend, **cfg), {"policy": backend})
    right, wrong = kids
    assert right.ended_by == "eos" and right.is_terminal and right.reward == 1.0 and not right.no_answer
    assert right.text == "<answer>The answer is: \\boxed{18}</answer>" and is_well_formed(right.text)
    assert wrong.ended_by == "eos" and wrong.reward == 0.0 and not wrong.no_answer and wrong.answer == "17"


def test_a_cut_off_or_malformed_node_is_a_counted_no_answer_not_a_verified_one():
    backend = ScriptedBackend({"answer": [(" \\boxed{18", "length"), (" 18</thinking>", "stop")]})
    tree = Tree("t", "p", "math", "What is 9 + 9?", "18", seed=0)
    ctx = _ctx(backend, action_graph={"root": {"answer": 2}}, foreign_tag_ends_thought=False)
    kids = _expand(tree, tree.root, ctx, {"policy": backend})
    assert [k.ended_by for k in kids] == ["length", "foreign_tag"]
    assert all(k.no_answer and k.is_terminal and k.reward == 0.0 for k in kids)
    assert kids[1].text == "<answer>The answer is: 18</thinking>"  # kept as the model left it


def test_an_answer_closed_with_the_previous_nodes_tag_is_read_and_stored_with_its_own():
    # SmolLM2's own answer node text (smollm2_cpu search): it copies the double-check's closing tag.
    backend = ScriptedBackend({"answer": [(" 2</double-check>", "stop"), (" 3</double-check>", "stop")]})
    tree = Tree("t", "p", "arithmetic", "Finn has 5 coins. Finn gives away 3. How many coins does Finn have now?", "2", seed=0)
    kids = _expand(tree, tree.root, _ctx(backend, action_graph={"root": {"answer": 2}}), {"policy": backend})
    assert [k.ended_by for k in kids] == ["foreign_tag", "foreign_tag"]  # still counted as such in format_stats
    right, wrong = kids
    assert right.text == "<answer>The answer is: 2</answer>" and is_well_formed(right.text)
    assert right.is_terminal and right.reward == 1.0 and not right.no_answer
    assert wrong.reward == 0.0 and not wrong.no_answer and wrong.answer == "3"


def test_an_extra_stop_string_ends_a_thought_at_a_paragraph_break():
    backend = ScriptedBackend({"thinking": [(" 9 + 9 = 18.\n\n", "stop")]})
    tree = Tree("t", "p", "math", "What is 9 + 9?", "18", seed=0)
    ctx = _ctx(backend, action_graph={"root": {"thinking": 1}, "thinking": {"answer": 1}}, stop_strings={"thinking": ["\n\n"]})
    exp = plan_expansion(tree, tree.root, ctx)
    assert exp.requests[0].stop[-1] == "\n\n" and exp.requests[0].stop[0] == "</thinking>"
    (kid,) = _expand(tree, tree.root, ctx, {"policy": backend})
    assert kid.ended_by == "stop_string" and not kid.is_terminal
    assert kid.text == "<thinking>Let me compute. 9 + 9 = 18.</thinking>" or kid.text == "<thinking>Next, 9 + 9 = 18.</thinking>"


def test_identical_sibling_samples_become_one_node_with_a_count():
    backend = ScriptedBackend(
        {
            "sub-task": [
                (" add them.</sub-task>", "stop"),
                (" add them.</sub-task>", "stop"),
                (" add them.</sub-task>", "stop"),
                (" add 9 and 9.</sub-task>", "stop"),
            ]
        }
    )
    tree = Tree("t", "p", "math", "What is 9 + 9?", "18", seed=0)
    kids = _expand(tree, tree.root, _ctx(backend, action_graph={"root": {"sub_task": 4}}), {"policy": backend})
    assert [k.samples for k in kids] == [3, 1]
    assert len({k.text for k in kids}) == len(kids) == 2


def test_prefills_come_from_the_profile():
    backend = ScriptedBackend({"answer": [(" 18</answer>", "stop")]})
    tree = Tree("t", "p", "math", "What is 9 + 9?", "18", seed=0)
    ctx = _ctx(backend, action_graph={"root": {"answer": 1}}, prefills={"answer": ["Final answer:"]})
    (kid,) = _expand(tree, tree.root, ctx, {"policy": backend})
    assert backend.prompts[-1].endswith("<answer>Final answer:")
    assert kid.text == "<answer>Final answer: 18</answer>" and kid.reward == 1.0
    assert SearchConfig().prefills["answer"] == ["The answer is:"]  # today's default stays
    assert SearchConfig(prefills={"answer": ["A:"]}).prefills["thinking"] == ["Let me compute.", "Next,"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prefills": {"answr": ["x"]}}, "prefills.answr"),
        ({"prefills": {"thinking": []}}, "prefills.thinking"),
        ({"stop_strings": {"thinking": [""]}}, "stop_strings.thinking"),
    ],
)
def test_bad_prefills_and_stop_strings_fail_naming_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**bad)


def test_critic_nodes_use_the_critics_chat_template_and_tokenizer():
    policy = ScriptedBackend(
        {"thinking": [(" 9 + 9 = 18</thinking>", "stop")]}, template="<|im_start|>user\n{u}<|im_end|>\n<|im_start|>assistant\n"
    )
    critic = ScriptedBackend(
        {"double-check": [(" yes, 18.</double-check>", "stop")]},
        template="<|start_header_id|>user<|end_header_id|>\n\n{u}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        chars_per_token=1,
    )
    tree = Tree("t", "p", "math", "What is 9 + 9?", "18", seed=0)
    ctx = _ctx(policy, critic, action_graph={"root": {"thinking": 1}, "thinking": {"double_check": 1, "thinking": 1}})
    backends = {"policy": policy, "critic": critic}
    (thought,) = _expand(tree, tree.root, ctx, backends)
    check, again = _expand(tree, thought, ctx, backends)
    assert check.model == "critic" and again.model == "policy"
    assert critic.prompts[-1].startswith("<|start_header_id|>user") and "<|im_start|>" not in critic.prompts[-1]
    assert critic.prompts[-1].endswith(
        thought.text + "<double-check>" + check.text[len("<double-check>") : -len(" yes, 18.</double-check>")]
    )
    assert check.n_tokens == len(check.text)  # counted by the critic's tokenizer (1 char = 1 token here)


@pytest.mark.parametrize(
    "text, reason, expected",
    [
        ("x</thinking>", "stop", "tag"),
        ("x", "stop", "eos"),
        ("x", "length", "length"),
        ("x</answer>", "stop", "foreign_tag"),
    ],
)
def test_node_ending_tells_tag_eos_length_and_foreign_tags_apart(text, reason, expected):
    assert node_ending("thinking", text, reason)[0] == expected


def test_format_stats_give_no_answer_rate_and_endings_per_node_type():
    import polars as pl

    from widen_dag.search.format_stats import format_stats, overall_ends
    from widen_dag.search.store import NODE_SCHEMA

    def row(i, ntype, ended_by, no_answer=False, samples=1):
        return {
            "tree_id": "t",
            "problem_id": "p",
            "node_id": f"t/{i}",
            "parent_id": None if i == 0 else "t/0",
            "depth": 1,
            "node_type": ntype,
            "model": "policy",
            "text": str(i),
            "n_tokens": 1,
            "visits": 0,
            "value_sum": 0.0,
            "is_terminal": False,
            "reward": None,
            "answer": None,
            "no_answer": no_answer,
            "finish_reason": "stop",
            "ended_by": ended_by,
            "samples": samples,
        }

    nodes = pl.DataFrame(
        [
            row(0, "root", ""),
            row(1, "thinking", "tag"),
            row(2, "thinking", "length", True),
            row(3, "answer", "eos", samples=3),
            row(4, "answer", "eos", True),
            row(5, "reflection", "fixed"),
        ],
        schema=NODE_SCHEMA,
    )
    stats = {r["node_type"]: r for r in format_stats(nodes)}
    assert set(stats) == {"thinking", "answer"}
    assert stats["thinking"]["no_answer_rate"] == 0.5 and stats["thinking"]["tag"] == 0.5 and stats["thinking"]["length"] == 0.5
    assert stats["answer"]["eos"] == 1.0 and stats["answer"]["samples"] == 4 and stats["answer"]["no_answer_rate"] == 0.5
    assert overall_ends(nodes) == {
        "tag_closed_share": 0.25,
        "eos_ended_share": 0.5,
        "foreign_tag_share": 0.0,
        "cut_off_share": 0.25,
    }


def test_eos_closing_and_sibling_merging_can_be_switched_off():
    backend = ScriptedBackend({"answer": [(" \\boxed{18}", "stop"), (" \\boxed{18}", "stop")]})
    tree = Tree("t", "p", "math", "What is 9 + 9?", "18", seed=0)
    ctx = _ctx(backend, action_graph={"root": {"answer": 2}}, eos_ends_thought=False, merge_identical_siblings=False)
    kids = _expand(tree, tree.root, ctx, {"policy": backend})
    assert len(kids) == 2 and all(k.ended_by == "eos" and k.no_answer and k.reward == 0.0 for k in kids)
    assert kids[0].text == "<answer>The answer is: \\boxed{18}"
