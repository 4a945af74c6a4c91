from __future__ import annotations

import json

import pytest

from widen_dag.domains import blocksworld as bw


@pytest.fixture(scope="module")
def planbench(datasets_dir):
    return json.loads((datasets_dir / "blocksworld" / "task_1_plan_generation.json").read_text())["instances"]


def test_every_planbench_ground_truth_plan_validates_against_its_english_statement(planbench):
    assert len(planbench) == 500
    for row in planbench:
        verdict = bw.validate(bw.parse_statement(row["query"]), bw.parse_plan(row["ground_truth_plan"]))
        assert verdict.valid, (row["instance_id"], verdict.detail)


def test_plans_with_one_step_removed_fail_at_that_step_or_miss_the_goal(planbench):
    checked = 0
    for row in planbench:
        instance = bw.parse_statement(row["query"])
        plan = bw.parse_plan(row["ground_truth_plan"])
        for k in range(len(plan)):
            verdict = bw.validate(instance, plan[:k] + plan[k + 1 :])
            assert not verdict.valid
            if k == len(plan) - 1:
                assert verdict.failed_step is None and verdict.unmet, verdict.detail
            else:
                # The action after the removed one now stands at 1-based position k + 1 and
                # lost the precondition the removed step established.
                assert verdict.failed_step == k + 1, (row["instance_id"], k, verdict.detail)
                assert verdict.unmet
            checked += 1
    assert checked > 1000


def test_english_statement_and_pddl_problem_file_give_the_same_instance(planbench, datasets_dir):
    for row in planbench[:50]:
        pddl = (datasets_dir / "blocksworld" / "instances" / f"instance-{row['instance_id']}.pddl").read_text()
        from_file = bw.parse_pddl_problem(pddl)
        from_text = bw.parse_statement(row["query"])
        assert (from_file.init, from_file.goal) == (from_text.init, from_text.goal)
        assert bw.parse_statement(from_file.statement()).init == from_file.init


def test_parse_plan_tolerates_numbering_blank_lines_mixed_forms_and_plan_end():
    text = """
    1. unstack the blue block from on top of the orange block

    2) (put-down blue)
    Step 3: pick up the orange block
    - stack the orange block on top of the blue block
    [PLAN END]
    pick up the red block
    """
    plan = bw.parse_plan(text)
    assert [str(a) for a in plan] == ["(unstack blue orange)", "(put-down blue)", "(pick-up orange)", "(stack orange blue)"]


def test_unknown_action_is_rejected_with_the_line():
    with pytest.raises(bw.BlocksworldError, match="teleport the red block"):
        bw.parse_plan("pick up the red block\nteleport the red block")


def test_pddl_with_unknown_predicate_is_rejected():
    with pytest.raises(bw.BlocksworldError, match="unknown predicate 'levitating'"):
        bw.parse_pddl_problem("(define (problem p) (:objects a) (:init (levitating a)) (:goal (and (ontable a))))")


def test_invalid_step_reports_its_unmet_preconditions():
    inst = bw.parse_statement(
        "As initial conditions I have that, the red block is clear, the hand is empty, "
        "the red block is on top of the blue block and the blue block is on the table.\n"
        "My goal is to have that the blue block is on top of the red block."
    )
    verdict = bw.validate(inst, bw.parse_plan("pick up the blue block"))
    assert not verdict.valid and verdict.failed_step == 1
    assert verdict.unmet == ["(clear blue)"]  # blue is on the table but red sits on it


def test_generator_is_seeded_and_its_bfs_plans_are_valid_and_shortest():
    a, b = bw.generate(15, 4, seed=3), bw.generate(15, 4, seed=3)
    assert [(i.init, i.goal, p) for i, p in a] == [(i.init, i.goal, p) for i, p in b]
    for instance, plan in a:
        assert bw.validate(instance, plan).valid
        for k in range(len(plan)):  # no plan one step shorter reaches the goal
            assert not bw.validate(instance, plan[:k] + plan[k + 1 :]).valid


def test_verify_scores_a_tagged_response():
    question = (
        "As initial conditions I have that, the red block is clear, the hand is empty, "
        "the red block is on the table.\nMy goal is to have that the red block is on the table."
    )
    assert bw.verify("<thinking>nothing to do</thinking><answer>The answer is:\n</answer>", "", question).no_answer
    ok = bw.verify("<answer>The answer is:\npick up the red block\nput down the red block</answer>", "", question)
    assert ok.correct
    bad = bw.verify("<answer>put down the red block</answer>", "", question)
    assert not bad.correct and not bad.no_answer


# ---- what real instruct models write --------------------------------------------------------
SWAP = (
    "As initial conditions I have that, the red block is clear, the hand is empty, "
    "the red block is on top of the blue block and the blue block is on the table.\n"
    "My goal is to have that the blue block is on top of the red block."
)


def test_a_plan_among_prose_and_chatty_lines_is_correct():
    response = (
        "Sure! Let's think about the blocks.\n\nHere is the plan:\n"
        "1. **Unstack the red block from on top of the blue block.**\n"
        "2. Then, put down the red block\n"
        "- pick up the blue block\n"
        "Finally, stack the blue block on top of the red block.\n\nThis reaches the goal. [PLAN END]"
    )
    verdict = bw.verify(response, "", SWAP)
    assert verdict.correct and not verdict.no_answer
    assert verdict.answer.splitlines() == ["(unstack red blue)", "(put-down red)", "(pick-up blue)", "(stack blue red)"]
    chatty_answer = (
        "<answer>The answer is:\nHere is the plan:\nunstack the red block from on top of the blue block\n"
        "put down the red block\npick up the blue block\nstack the blue block on top of the red block</answer>"
    )
    assert bw.verify(chatty_answer, "", SWAP).correct


@pytest.mark.parametrize(
    "response",
    [
        "I am not sure how to solve this puzzle.",
        "Let me think about which block to move first. The red block is on the blue one, so",  # cut off before a plan
        "<answer>The answer is: Here is the plan:</answer>",
        "<thinking>I could unstack the red block from on top of the blue block</thinking>",  # deliberation, no answer block
    ],
)
def test_a_response_without_a_plan_is_a_no_answer(response):
    verdict = bw.verify(response, "", SWAP)
    assert verdict.no_answer and not verdict.correct


def test_a_plan_with_an_illegal_step_is_wrong_and_names_the_step():
    response = "Here is my plan:\nunstack the red block from on top of the blue block\npick up the blue block\n"
    verdict = bw.verify(response, "", SWAP)
    assert not verdict.correct and not verdict.no_answer
    assert "step 2" in verdict.detail and "(pick-up blue)" in verdict.detail and "(handempty)" in verdict.detail
    garbled = bw.verify("Plan:\nunstack the red block from on top of the blue block\nstack the red block sideways\n", "", SWAP)
    assert not garbled.correct and not garbled.no_answer and "step 2" in garbled.detail


def test_a_draft_plan_followed_by_a_corrected_one_is_graded_on_the_corrected_one():
    from widen_dag.domains.blocksworld import plan_actions

    numbered = (
        "Here is my plan:\n1. unstack the red block from on top of the blue block\n2. put down the red block\n"
        "Corrected plan:\n1. pick up the blue block\n2. stack the blue block on top of the red block\n"
    )
    assert [str(a) for a in plan_actions(numbered)] == ["(pick-up blue)", "(stack blue red)"]
    unnumbered = (
        "unstack the red block from on top of the blue block\nput down the red block\n"
        "Wait, that leaves the blue block where it was. Let me redo it.\n"
        "pick up the blue block\nstack the blue block on top of the red block"
    )
    assert [str(a) for a in plan_actions(unnumbered)] == ["(pick-up blue)", "(stack blue red)"]
    # A remark between the steps of one plan does not split it.
    remark = "1. unstack the red block from on top of the blue block\n   This frees the blue block.\n2. put down the red block"
    assert [str(a) for a in plan_actions(remark)] == ["(unstack red blue)", "(put-down red)"]
