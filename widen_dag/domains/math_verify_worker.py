"""Child process for math-verify: one JSON request per line on stdin, one answer per line.

Runs math-verify in this process's main thread, where its signal-based timeouts work.
The parent kills this process when a call overruns its deadline.
"""

from __future__ import annotations

import contextlib
import json
import sys


def _wrap(expr: str) -> str:
    expr = expr.strip()
    return expr if expr.startswith("$") else f"${expr}$"


def equivalent(pred: str, gold: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify

    # LaTeX extraction only: math-verify's plain-expression extraction runs sympy's
    # parse_expr, which evaluates Python; model output must never reach an eval.
    latex_only = [LatexExtractionConfig()]
    gold_parsed = parse(_wrap(gold), extraction_config=latex_only, parsing_timeout=1)
    pred_parsed = parse(_wrap(pred), extraction_config=latex_only, parsing_timeout=1)
    if not gold_parsed or not pred_parsed:
        return False  # an empty parse is a no-answer, never a match
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=1))


def main() -> None:
    sys.set_int_max_str_digits(0)  # '9'*5000 must parse, not vanish
    import math_verify  # noqa: F401  (pay the import once, before the first request)

    # Warm up the LaTeX grammar and sympy's printers: on a busy machine their first use alone
    # can exceed the 1 s parsing/verify timeouts, and a right answer would be scored wrong.
    with contextlib.suppress(Exception):
        equivalent(r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})")

    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = equivalent(str(req["pred"]), str(req["gold"]))
        except Exception:  # odd input that math-verify raises on is "not equivalent"
            ok = False
        sys.stdout.write(json.dumps({"equivalent": ok}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
