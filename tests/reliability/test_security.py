"""Safe defaults: safetensors only, no remote code unless asked, the UI on 127.0.0.1, no
eval/exec of anything (model output and math parsing included), SQL only from the repo's
files with parameters bound as literals, secrets only from environment variables."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import duckdb
import pytest

from widen_dag.datasets import sql as sqlmodels
from widen_dag.profiles import PROFILE_DIR, ProfileError, available_profiles, load_profile, parse_profile

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted((REPO / "widen_dag").rglob("*.py"))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            yield node, (f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")


def test_no_eval_exec_or_pickle_loading_anywhere_in_the_package():
    found = []
    for path in SOURCES:
        for node, name in _calls(path):
            owner = ast.unparse(node.func)
            builtin_eval = isinstance(node.func, ast.Name) and name in {"eval", "exec", "compile", "__import__"}
            python_parsers = name in {"parse_expr", "sympify"}  # sympy's string parsers eval Python
            pickle_loads = name in {"load", "loads"} and owner.startswith(("pickle.", "torch.", "joblib.", "dill."))
            if builtin_eval or python_parsers or pickle_loads:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {owner}")
    assert found == []


def test_math_verification_never_reaches_sympys_python_evaluating_parser(monkeypatch):
    import math_verify.parser
    import sympy.parsing.sympy_parser

    def refuse(*args, **kwargs):
        raise AssertionError(f"parse_expr called with {args[:1]}")

    monkeypatch.setattr(math_verify.parser, "parse_expr", refuse)
    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", refuse)
    math_verify.parser.parse_expr_cached.cache_clear()
    from widen_dag.domains.math_verify_worker import equivalent

    assert equivalent("\\frac{1}{2}", "0.5")
    assert not equivalent("__import__('os').system('echo pwned')", "1")
    assert not equivalent("x**2 + (lambda: 1)()", "x^2+1")


def test_models_load_from_safetensors_and_remote_code_only_from_the_profile():
    loads = []
    for path in SOURCES:
        for node, name in _calls(path):
            if name == "from_pretrained" and "Model" in ast.unparse(node.func):
                kw = {k.arg: k.value for k in node.keywords}
                loads.append(path.name)
                # safetensors, or a GGUF file (llm/gguf.py): tensor containers without pickle's code execution
                safetensors = isinstance(kw.get("use_safetensors"), ast.Constant) and kw["use_safetensors"].value is True
                assert safetensors or "gguf_file" in kw, path
            for k in node.keywords:
                if k.arg == "trust_remote_code":
                    assert not (isinstance(k.value, ast.Constant) and k.value.value is True), f"{path}:{node.lineno}"
    assert loads  # the scan found the model loaders
    for name in available_profiles():
        profile = load_profile(name)
        for ref in (profile.models.policy, profile.models.student, profile.models.critic):
            assert ref is None or ref.trust_remote_code is False, name


def test_the_ui_is_bound_to_localhost_everywhere_it_is_started():
    texts = {p: (REPO / p).read_text() for p in ("Makefile", "README.md", "widen_dag/cli.py")}
    command = re.compile(r"(?:bin/|^\s*)dagster(?:-webserver)?\s+dev\b|bin/dagster-webserver\b")  # commands, not prose
    starts = [(p, line) for p, t in texts.items() for line in t.splitlines() if command.search(line)]
    assert starts
    for where, line in starts:
        assert "-h 127.0.0.1" in line, f"{where}: {line.strip()}"
    browser = (REPO / "tests" / "ui" / "test_browser.py").read_text()
    assert '"-h", "127.0.0.1"' in browser


def test_sql_runs_only_from_the_repos_model_files_with_parameters_as_literals(tmp_path):
    models = sqlmodels.load_models()
    assert {m.path.parent for m in models.values()} == {sqlmodels.SQL_DIR}
    con = duckdb.connect()
    evil = "longest'; DROP TABLE t; --"
    assert con.sql(sqlmodels._bind("SELECT $sft_selection AS v", {"sft_selection": evil})).fetchall() == [(evil,)]
    with pytest.raises(sqlmodels.SqlModelError, match=r"\$x: only text, numbers and booleans"):
        sqlmodels._bind("SELECT $x", {"x": ["1); DROP TABLE t; --"]})


def test_secrets_come_only_from_environment_variables():
    with pytest.raises(ProfileError, match="hf_token"):
        parse_profile(
            {
                "name": "t",
                "hf_token": "hf_abc",
                "datasets": [{"name": "a", "domain": "arithmetic", "source": {"kind": "arithmetic"}}],
            }
        )
    secretish = re.compile(r"(?i)(token|password|secret|api_key)\s*:\s*\S+")
    for path in PROFILE_DIR.glob("*.yaml"):
        for line in path.read_text().splitlines():
            m = secretish.search(line.split("#")[0])
            # only the k8s profile's secret_env, which names a Kubernetes secret, never a value
            assert m is None or re.search(r"^\s+[A-Z_]+: [a-z0-9-]+/[a-z0-9_]+$", line), f"{path.name}: {line}"
