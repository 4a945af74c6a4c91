"""Every case of the bad-input corpus is quarantined with a reason, rejected with one clear
message, or handled with a bounded verdict; nothing crashes."""

from __future__ import annotations

import pytest

from tests.reliability.bad_inputs import CASES, run_case
from widen_dag.domains.math import _STARTUP_GRACE_S, VERIFY_DEADLINE_S


def test_the_corpus_has_at_least_thirty_distinct_cases():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_quarantined_rejected_or_handled(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.kind == case.expect, outcome.message[:500]
    assert case.contains in outcome.message, outcome.message[:500]
    if outcome.kind == "rejected":
        assert "\n" not in outcome.message.strip() and len(outcome.message) < 600  # one clear line
    # Verifier calls are bounded by construction: the parent stops waiting at the deadline (plus
    # the child's start-up grace on a first call) and kills the child, however busy the machine.
    # A hung verifier would blow far past this; a loaded machine cannot.
    assert outcome.seconds <= VERIFY_DEADLINE_S + _STARTUP_GRACE_S + 1.0
