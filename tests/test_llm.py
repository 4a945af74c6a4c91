"""Both generation backends on a tiny (untrained) checkpoint built with the bootstrap code."""

from __future__ import annotations

import random

import pytest

from tests.engines import TINY_ENGINE
from widen_dag.llm import GenerationConfigError, GenerationRequest, Sample, create_backend
from widen_dag.llm.loading import resolve_model_path
from widen_dag.search.thoughts import choose_prefill, open_tag


@pytest.fixture(scope="module", params=["transformers", pytest.param("vllm", marks=pytest.mark.slow)])
def backend(request, tiny_checkpoint):
    if request.param == "vllm":
        yield request.getfixturevalue("tiny_vllm")  # the session's engine, shared with the critic test
        return
    b = create_backend(request.param, str(tiny_checkpoint), **TINY_ENGINE)
    yield b
    b.close()


def test_backends_return_n_samples_with_text_tokens_logprob_and_finish_reason(backend):
    prompt = backend.chat_prompt("What is 2 + 3?", open_tag("thinking") + choose_prefill("thinking", random.Random(0)))
    reqs = [
        GenerationRequest(prompt=prompt, n=3, max_tokens=12, temperature=0.7, top_p=0.9, stop=("</thinking>",)),
        GenerationRequest(prompt=prompt, n=1, max_tokens=5, temperature=0.0),
    ]
    out = backend.generate(reqs)
    assert [len(o) for o in out] == [3, 1]
    for s in out[0] + out[1]:
        assert isinstance(s, Sample) and isinstance(s.text, str)
        assert 0 < s.n_tokens <= 12
        assert s.cumulative_logprob <= 0.0
        assert s.finish_reason in ("stop", "length")
        if s.finish_reason == "length" and "</thinking>" not in s.text:
            assert s.n_tokens in (5, 12)
    assert backend.stats.generated_tokens >= sum(s.n_tokens for o in out for s in o)
    assert backend.stats.prompt_tokens > 0


def test_stop_string_is_kept_or_dropped_as_asked(backend):
    # An untrained model rarely emits the stop string by itself: check the contract on the
    # cut helper both backends share, and that no sample runs past a stop it produced.
    prompt = backend.chat_prompt("x")
    for include in (True, False):
        out = backend.generate([GenerationRequest(prompt=prompt, n=4, max_tokens=40, stop=("e",), include_stop=include)])
        for s in out[0]:
            if s.finish_reason == "stop" and "e" in s.text:
                assert s.text.endswith("e") if include else "e" not in s.text
            if not include:
                assert "e" not in s.text


def test_greedy_generation_is_deterministic(backend):
    prompt = backend.chat_prompt("Ann has 3 apples.")
    a = backend.generate([GenerationRequest(prompt=prompt, max_tokens=8, temperature=0.0)])
    b = backend.generate([GenerationRequest(prompt=prompt, max_tokens=8, temperature=0.0)])
    assert a[0][0].text == b[0][0].text


def test_token_id_prompts_are_accepted(backend):
    ids = tuple(backend.tokenizer(backend.chat_prompt("hi"), add_special_tokens=False)["input_ids"])
    out = backend.generate([GenerationRequest(prompt_token_ids=ids, max_tokens=4, temperature=0.0)])
    assert out[0][0].n_tokens > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "x", "max_tokens": 0}, "request.max_tokens must be > 0"),
        ({"prompt": "x", "temperature": -0.1}, "request.temperature must be >= 0"),
        ({"prompt": "x", "n": 0}, "request.n must be >= 1"),
        ({}, "exactly one of prompt or prompt_token_ids"),
    ],
)
def test_bad_requests_fail_with_the_field(kwargs, message):
    with pytest.raises(GenerationConfigError, match=message):
        GenerationRequest(**kwargs)


def test_unknown_backend_missing_path_and_missing_chat_template_fail_clearly(tiny_checkpoint, tmp_path):
    with pytest.raises(GenerationConfigError, match="generation.backend: unknown backend 'tgi'"):
        create_backend("tgi", str(tiny_checkpoint))
    with pytest.raises(GenerationConfigError, match="model path ./no/such/model does not exist"):
        resolve_model_path("./no/such/model")
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint, bare)
    cfg = bare / "tokenizer_config.json"
    import json

    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    for f in bare.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(GenerationConfigError, match=f"model {bare}: its tokenizer has no chat template"):
        create_backend("transformers", str(bare), device="cpu")


def test_pickle_only_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(GenerationConfigError, match="safetensors required"):
        resolve_model_path(str(tmp_path))


def test_transformers_backend_continuing_in_passes_matches_one_pass(tiny_checkpoint):
    # Rows still going after a pass continue, re-batched, from what they wrote: greedy text,
    # token counts, finish reasons and log-probs must be those of one uninterrupted pass.
    from widen_dag.llm.hf_backend import TransformersBackend

    prompts = ["Ann has 3 apples.", "What is 2 + 3?", "x", "Bob has 12 pears and eats 5 of them. How many are left?"]

    def run(min_pass_tokens: int) -> list[Sample]:
        b = TransformersBackend(str(tiny_checkpoint), device="cpu", max_batch=3, min_pass_tokens=min_pass_tokens)
        reqs = [GenerationRequest(prompt=b.chat_prompt(p), max_tokens=30, temperature=0.0) for p in prompts]
        reqs.append(GenerationRequest(prompt=b.chat_prompt("x"), max_tokens=30, temperature=0.0, stop=("e",)))
        return [o[0] for o in b.generate(reqs)]

    in_passes, whole = run(4), run(1000)
    assert [(s.text, s.n_tokens, s.finish_reason) for s in in_passes] == [(s.text, s.n_tokens, s.finish_reason) for s in whole]
    assert [s.cumulative_logprob for s in in_passes] == pytest.approx([s.cumulative_logprob for s in whole], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.95), (1.0, 0.5), (1.3, 0.99)])
def test_nucleus_warper_keeps_the_tokens_transformers_top_p_keeps(temperature, top_p):
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from widen_dag.llm.hf_backend import nucleus_warper

    torch.manual_seed(0)
    peaked = torch.randn(64, 1000) * 6  # nucleus inside the 64 candidates
    flat = torch.randn(64, 1000) * 0.3  # nucleus of hundreds of tokens: the full-sort rows
    scores = torch.cat([peaked, flat])
    ours = nucleus_warper(temperature, top_p)(None, scores)
    theirs = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = ~torch.isinf(ours)
    assert torch.allclose(ours[kept], theirs[kept])
    assert kept[64:].sum(dim=-1).min() > 64  # the flat rows did reach past the candidates


def test_evaluation_backend_takes_eval_dtype_and_batch_and_falls_back_to_the_generation_dtype(monkeypatch):
    import widen_dag.llm as llm
    from widen_dag.profiles import parse_profile

    seen = []
    monkeypatch.setattr(llm, "create_backend", lambda name, model, **kw: seen.append((name, kw)))
    base = {"name": "t", "datasets": [{"name": "a", "domain": "arithmetic", "source": {"kind": "arithmetic"}}]}
    profile = parse_profile({**base, "generation": {"dtype": "float16"}, "eval": {"backend": "transformers", "batch_size": 64}})
    llm.eval_backend_from_profile(profile, "m", seed=3)
    profile = parse_profile({**base, "eval": {"backend": "transformers", "dtype": "bfloat16"}})
    llm.eval_backend_from_profile(profile, "m", seed=3)
    assert [(name, kw["dtype"], kw["max_batch"], kw["seed"]) for name, kw in seen] == [
        ("transformers", "float16", 64, 3),
        ("transformers", "bfloat16", 128, 3),
    ]


@pytest.mark.parametrize(
    ("amx", "device", "gpu", "expected"),
    [
        (True, "cpu", False, "bfloat16"),
        (False, "cpu", False, "float32"),
        (False, "cuda", True, "bfloat16"),
        (False, "auto", True, "bfloat16"),
        (False, "auto", False, "float32"),  # auto without a GPU runs on the CPU
    ],
)
def test_bfloat16_on_amx_evaluates_in_bfloat16_only_where_it_is_fast(monkeypatch, amx, device, gpu, expected):
    import torch

    import widen_dag.llm as llm
    from widen_dag.profiles import parse_profile

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    seen = []
    monkeypatch.setattr(llm, "create_backend", lambda name, model, **kw: seen.append(kw["dtype"]))
    profile = parse_profile(
        {
            "name": "t",
            "datasets": [{"name": "a", "domain": "arithmetic", "source": {"kind": "arithmetic"}}],
            "generation": {"device": device},
            "eval": {"backend": "transformers", "dtype": "bfloat16_on_amx"},
        }
    )
    llm.eval_backend_from_profile(profile, "m", seed=3)
    assert seen == [expected]
    assert llm.resolve_eval_dtype("float16", device) == "float16"  # an explicit dtype is kept
