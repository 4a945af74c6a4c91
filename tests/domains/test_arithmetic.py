from __future__ import annotations

import pytest

from widen_dag.domains import arithmetic as ar

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def test_generator_is_seeded_distinct_and_golds_follow_the_steps():
    a = ar.generate(300, steps=3, max_operand=9, seed=11)
    assert a == ar.generate(300, steps=3, max_operand=9, seed=11)
    assert a != ar.generate(300, steps=3, max_operand=9, seed=12)
    assert len({p.question for p in a}) == 300
    for p in a:
        value = p.start
        for s in p.steps:
            assert s.left == value and _APPLY[s.op](s.left, s.right) == s.result >= 0
            value = s.result
        assert p.gold == str(value)
        assert len(p.steps) == 3


def test_difficulty_knobs_bound_the_operands():
    for p in ar.generate(200, steps=2, max_operand=5, seed=0):
        assert all(1 <= s.right <= 5 for s in p.steps)


def test_impossible_request_fails_clearly():
    with pytest.raises(ValueError, match="cannot draw"):
        ar.generate(10_000, steps=1, max_operand=2, seed=0)


def test_verify_and_gold_normalisation():
    assert ar.verify("<answer>The answer is: \\boxed{12}</answer>", "12").correct
    assert ar.normalize_gold("1,200") == "1200"
    with pytest.raises(ValueError, match="integer"):
        ar.normalize_gold("2.5")
