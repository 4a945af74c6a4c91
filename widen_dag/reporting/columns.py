"""What each column of each table asset means: the one home of the descriptions the Dagster UI
shows in an asset's Columns tab (``dagster/column_schema``, built in widen_dag.defs.metadata).

A column with the same meaning everywhere (problem_id, tree_id, ...) is described once in
``SHARED``; ``TABLES`` holds what is particular to a table (and overrides a shared meaning);
``_DERIVED`` covers the ablation report's generated columns (interval bounds, Test@k, paired
differences). tests/test_column_descriptions.py checks every column of every table asset.
"""

from __future__ import annotations

import re

SHARED = {
    "problem_id": "stable id of the problem: its domain and a hash of its question and gold answer",
    "tree_id": "id of the problem's search tree: <problem_id>-s<search seed>",
    "node_id": "id of a tree node: <tree_id>/<index in creation order>",
    "path_id": "id of a root-to-terminal path: the node id of its terminal node",
    "node_ids": "the path's node ids from the root to its terminal node",
    "domain": "problem domain (arithmetic, math, blocksworld, instruction_following)",
    "dataset": "the profile's dataset entry the row was loaded from",
    "shard": "problem shard (the partition key of raw_problems and search_trees)",
    "row_index": "row number within the source file of the shard",
    "source_id": "the row's id in its source dataset",
    "question": "the problem text as the source gives it",
    "prompt": "the task prompt the model sees (domain instructions and the question)",
    "split": "train (searched and trained on) or eval (held out for evaluation)",
    "gold": "the reference answer, normalized for the domain's verifier",
    "meta": "domain-specific fields as JSON (e.g. IFEval instruction ids and arguments)",
    "tokens": "length of the path in student-tokenizer tokens",
    "messages": "the conversation in TRL's format: a user turn (the prompt) and an assistant turn (the response)",
    "chars": "length in characters",
}

TABLES: dict[str, dict[str, str]] = {
    "raw_problems": {
        "gold_raw": "the reference answer as the source gives it",
        "load_error": "why the row could not be read (null when it loaded)",
    },
    "stg_problems": {"source": "the source dataset of the problem (e.g. gsm8k, synthetic arithmetic)"},
    "problem_quarantine": {
        "reason": "why the row was kept out of stg_problems (unparseable gold, duplicate, empty question, ...)",
        "question_preview": "the start of the question, to find the row",
    },
    "search_trees": {
        "parent_id": "node_id of the parent node (null for the root)",
        "depth": "distance from the root (the root is 0)",
        "node_type": "thought type: root, sub_task, thinking, hypothesis, double_check, reflection, thinking_from_scratch, answer",
        "model": "which model wrote the node: policy or critic",
        "text": "the node's thought, with its open and close tags",
        "n_tokens": "length of the node's text in policy-tokenizer tokens",
        "visits": "MCTS visit count N",
        "value_sum": "MCTS summed value W (sum of the rewards backed up through the node)",
        "is_terminal": "true when no child can follow: an answer, or the depth or token limit reached",
        "reward": "the verifier's reward of a terminal node: 1 correct, 0 wrong or no answer; null for inner nodes",
        "answer": "the answer the verifier parsed from an answer node (null when none)",
        "no_answer": "true when an answer node holds no parseable answer",
        "finish_reason": "why generation stopped for this node (stop, length, ...)",
        "ended_by": "what closed the node: its tag, a stop string, end of turn, a foreign tag, or the token limit",
        "samples": "generations sampled to get this node (more than 1 when a sample was rejected and redrawn)",
    },
    "node_lengths": {
        "student_tokens": "length of the node's text in student-tokenizer tokens (what SFT and DPO train on)",
        "chars": "length of the node's text in characters",
    },
    "tree_paths": {
        "node_idx": "the path's node indices within the tree, as integers",
        "path_text": "the response: the path's tagged thoughts concatenated",
        "correct": "true when the terminal answer is correct",
        "no_answer": "true when the terminal node holds no parseable answer",
        "depth": "number of nodes below the root on the path",
        "chars": "length of the path's text in characters",
        "cum_tokens": "running length in student tokens after each node of the path",
        "cum_chars": "running length in characters after each node of the path",
    },
    "path_stats": {
        "paths": "root-to-terminal paths in the problem's tree",
        "correct_paths": "paths ending in a correct answer",
        "wrong_paths": "paths ending in a wrong answer",
        "no_answer_paths": "paths ending without a parseable answer",
        "min_correct_tokens": "student tokens of the shortest correct path",
        "max_correct_tokens": "student tokens of the longest correct path",
        "mean_depth": "mean number of nodes per path",
    },
    "length_profile": {
        "correct_paths": "correct paths of the problem",
        "shortest_tokens": "student tokens of the shortest correct path",
        "median_tokens": "student tokens of the median correct path",
        "longest_tokens": "student tokens of the longest correct path",
    },
    "sft_dataset": {
        "depth": "number of thoughts in the response",
        "selection": "which correct path was taken: longest (default), shortest or all_correct",
    },
    "preference_pairs": {
        "pairing": "balanced: the shortest correct path is chosen (Thoughts Length Balance); default: a correct path by content hash",
        "chosen": "the chosen response (TRL's chosen column)",
        "rejected": "the rejected response (TRL's rejected column)",
        "chosen_path_id": "path_id of the chosen (correct) path",
        "chosen_node_ids": "node ids of the chosen path, root first",
        "rejected_path_id": "path_id of the rejected (wrong or no-answer) path",
        "rejected_node_ids": "node ids of the rejected path, root first",
        "chosen_tokens": "student tokens of the chosen response",
        "rejected_tokens": "student tokens of the rejected response",
        "rejected_no_answer": "true when the rejected path ends without a parseable answer",
        "common_prefix_nodes": "nodes the two paths share below the root",
        "common_prefix_tokens": "student tokens of the shared prefix (fine-grained DPO masks it)",
        "common_prefix_chars": "characters of the shared prefix",
    },
    "distill_dataset": {"source": "where the long chain of thought came from (synthetic-overthinking or the file named)"},
    "eval_results": {
        "variant": "the model evaluated: base, distill_baseline, sft, or a DPO variant",
        "checkpoint": "path of the evaluated checkpoint",
        "eval_set": "the held-out set (one per domain)",
        "sample": "index of the response among the problem's responses of this decoding",
        "response": "the model's response",
        "n_tokens": "response length in tokens",
        "finish_reason": "why generation stopped (stop, length, ...)",
        "cut_off": "true when the response hit the token limit (then a no-answer unless its answer block closed)",
        "answer": "the answer the verifier parsed (null when none)",
        "correct": "true when the answer is correct",
        "no_answer": "true when the response holds no parseable answer",
        "well_formed": "true when the response keeps the tagged thought format",
        "reflections": "reflection phrases in the response",
        "decoding": "sampled (eval.temperature) or greedy",
    },
    "mcts_decode": {
        "variant": "the model decoding: a checkpoint of the ablation",
        "checkpoint": "the checkpoint decoded (where it is published)",
        "eval_set": "the held-out set (one per domain)",
        "method": "sampled (independent samples) or mcts (tree search at test time: one attempt per rollout)",
        "budget": "attempts allowed: MCTS rollouts, or samples drawn",
        "attempts": "answers produced within the budget",
        "n_correct": "correct answers among the attempts (mcts: 1 when the tree was solved)",
        "first_correct": "1-based index of the first correct attempt (null when none)",
        "nodes": "search tree nodes generated for the problem (mcts; null for sampled)",
    },
    "ablation_report": {
        "variant": "the model evaluated: base, distill_baseline, sft, or a DPO variant (dpo, balanced, cdpo, joint, joint_masked)",
        "eval_set": "the held-out set (one per domain)",
        "prev_variant": "the row above this one in the paper's table (the reference of the *_vs_prev columns)",
        "n": "problems evaluated",
        "samples_per_problem": "sampled responses per problem",
        "accuracy": "share of sampled responses that are correct",
        "no_answer_rate": "share of sampled responses without a parseable answer",
        "greedy_accuracy": "share of problems whose greedy response is correct",
        "greedy_no_answer_rate": "share of problems whose greedy response has no parseable answer",
        "test_at_n": "share of problems solved by any of their samples",
        "mean_tokens": "mean response length in tokens",
        "median_tokens": "median response length in tokens",
        "reflections_per_response": "mean reflection phrases per response",
    },
}

_METRICS = {"acc": "accuracy", "no_answer": "no-answer rate", "greedy": "greedy accuracy"}
_DERIVED: list[tuple[re.Pattern[str], str]] = [
    # first: the bounds of any column (test_at_2_lo, acc_diff_vs_sft_hi, ...)
    (re.compile(r"^(?P<base>.+)_(?P<end>lo|hi)$"), "{end} end of the 95% interval of {base}"),
    (re.compile(r"^test_at_(?P<k>\d+)$"), "share of problems solved by at least one of their first {k} samples (Test@{k})"),
    (
        re.compile(r"^(?P<metric>acc|no_answer|greedy)_diff_vs_(?P<ref>\w+?)$"),
        "paired difference in {metric} against the {ref} row on the same problems (this row minus it)",
    ),
    (re.compile(r"^greedy_mcnemar_p_vs_(?P<ref>\w+)$"), "McNemar p-value of greedy correctness against the {ref} row"),
]


def column_description(table: str, column: str) -> str:
    """The column's description; "" when there is none (tests keep that from happening)."""
    found = TABLES.get(table, {}).get(column) or SHARED.get(column)
    if found:
        return found
    for pattern, template in _DERIVED:
        m = pattern.match(column)
        if m:
            fields = m.groupdict()
            if "metric" in fields:
                fields["metric"] = _METRICS[fields["metric"]]
            if "ref" in fields:
                fields["ref"] = "previous (prev_variant)" if fields["ref"] == "prev" else fields["ref"]
            if "end" in fields:
                fields["end"] = "lower" if fields["end"] == "lo" else "upper"
            return template.format(**fields)
    return ""
