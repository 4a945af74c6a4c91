"""The transformers backend: batched ``generate`` with KV cache, left padding and stop strings.

Requests with the same sampling settings are batched together (each prompt repeated n
times); stop strings are applied by ``generate`` itself (``stop_strings``) and the text is
cut at the first one afterwards, so the result matches the vLLM backend's. Rows are generated
in passes (see ``_decode``) so that finished rows stop costing decode steps, the nearest a static
``generate`` gets to vLLM's continuous batching.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from widen_dag.llm.base import ChatTokenizerMixin, EngineStats, GenerationRequest, Sample, backend_device, cut_at_stop
from widen_dag.llm.loading import load_tokenizer, resolve_model_path


@dataclass
class _Row:
    """One sequence being generated: its request, prompt ids and what it has written so far."""

    request: int
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    eos_hit: bool = False
    done: bool = False


def nucleus_warper(temperature: float, top_p: float, candidates: int = 64):
    """A logits processor for ``generate`` that divides by ``temperature`` and keeps the top-p
    nucleus, the tokens transformers' TopPLogitsWarper keeps, without sorting the whole
    vocabulary at every step (that sort was 16% of a tiny model's sampled decoding here): the
    ``candidates`` most likely tokens are ranked first, and only a row whose nucleus reaches
    past them is sorted in full."""
    import torch
    from transformers import LogitsProcessor

    class _Nucleus(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores / temperature
            if top_p >= 1.0:
                return scores
            probs = scores.softmax(dim=-1)
            top_probs, top_ids = probs.topk(min(candidates, probs.shape[-1]), dim=-1)
            before = top_probs.cumsum(dim=-1) - top_probs  # mass of the tokens ranked above each one
            keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top_ids, before < top_p)
            wide = before[:, -1] + top_probs[:, -1] < top_p  # the nucleus reaches past the candidates
            if wide.any():
                full, order = probs[wide].sort(dim=-1, descending=True)
                keep[wide] = torch.zeros_like(full, dtype=torch.bool).scatter_(1, order, full.cumsum(dim=-1) - full < top_p)
            return scores.masked_fill(~keep, -float("inf"))

    return _Nucleus()


class TransformersBackend(ChatTokenizerMixin):
    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        max_batch: int = 128,
        revision: str | None = None,
        trust_remote_code: bool = False,
        min_pass_tokens: int = 32,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model_name = model
        path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(path, model, revision=revision, trust_remote_code=trust_remote_code)
        self.device = backend_device(device)
        if device == "cuda" and self.device != "cuda":
            raise RuntimeError(f"backend device 'cuda' requested for {model} but torch sees no CUDA device")
        torch_dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.model.config.use_cache = True
        self.seed = seed
        self.max_batch = max_batch
        self.min_pass_tokens = min_pass_tokens
        self.stats = EngineStats()
        self._torch = torch

    def _ids(self, req: GenerationRequest) -> list[int]:
        if req.prompt_token_ids is not None:
            return list(req.prompt_token_ids)
        return self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[GenerationRequest]) -> list[list[Sample]]:
        start = time.perf_counter()
        out: list[list[Sample]] = [[] for _ in requests]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.temperature, r.top_p, r.max_tokens, r.stop, r.include_stop)].append(i)
        # One torch generator seeded per call keeps runs reproducible for the same inputs.
        self._torch.manual_seed(self.seed + self.stats.calls)
        for (temperature, top_p, max_tokens, stop, include_stop), idxs in groups.items():
            rows = [_Row(i, self._ids(requests[i])) for i in idxs for _ in range(requests[i].n)]
            self._decode(rows, temperature, top_p, max_tokens, stop)
            for row in rows:
                out[row.request].append(self._sample(row, stop, include_stop))
                self.stats.prompt_tokens += len(row.prompt)
                self.stats.generated_tokens += out[row.request][-1].n_tokens
        self.stats.requests += len(requests)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start
        return out

    def _decode(self, rows: list[_Row], temperature: float, top_p: float, max_tokens: int, stop) -> None:
        """Generate in passes: a static batch runs until its longest row ends, so one rambling
        answer would hold hundreds of finished rows for the whole budget. Each pass stops at half
        the tokens left; only the rows still going continue, re-batched, from what they wrote."""
        pending = rows
        while pending:
            left = max_tokens - len(pending[0].generated)
            step = left if left <= self.min_pass_tokens else max(self.min_pass_tokens, left // 2)
            for b in range(0, len(pending), self.max_batch):
                self._generate_pass(pending[b : b + self.max_batch], temperature, top_p, step, stop)
            pending = [r for r in pending if not r.done and len(r.generated) < max_tokens]

    def _generate_pass(self, chunk: list[_Row], temperature: float, top_p: float, max_new: int, stop) -> None:
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        inputs = [r.prompt + r.generated for r in chunk]
        width = max(len(ids) for ids in inputs)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in inputs], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in inputs], device=self.device)
        kwargs = dict(
            do_sample=temperature > 0,
            max_new_tokens=max_new,
            pad_token_id=pad,
            eos_token_id=eos,
            return_dict_in_generate=True,
            output_scores=True,
            # A cache allocated once per pass and written in place: the default cache grows by
            # concatenation, copying every row's keys and values at every step (measured here on
            # a ~1M-parameter model, batch 512: 2.1x the tokens/s). Models without Cache support
            # fall back to their own cache (transformers warns).
            cache_implementation="static",
        )
        if temperature > 0:
            # temperature and top-p in one processor (transformers would apply a custom one before its
            # own temperature warper)
            kwargs.update(temperature=1.0, top_p=1.0, top_k=0, logits_processor=[nucleus_warper(temperature, top_p)])
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        with torch.no_grad():
            gen = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        new = gen.sequences[:, width:]
        scores = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
        for k, row in enumerate(chunk):
            tokens = new[k].tolist()
            n_gen = len(tokens)
            for j, t in enumerate(tokens):
                if t in (eos, pad):
                    n_gen, row.eos_hit, row.done = j, t == eos, True
                    break
            row.generated += tokens[:n_gen]
            row.token_logprobs += scores[k, :n_gen].float().clamp(min=-1e9).tolist()
            if not row.done and n_gen < max_new:  # the batch's stop-string criterion ended it
                row.done = True
            if not row.done and stop and cut_at_stop(self._text(row), stop, False)[1]:
                row.done = True

    def _text(self, row: _Row) -> str:
        return self.tokenizer.decode(row.generated, skip_special_tokens=True)

    def _sample(self, row: _Row, stop, include_stop: bool) -> Sample:
        text, stopped = cut_at_stop(self._text(row), stop, include_stop)
        n_gen = len(row.generated)
        if stopped:  # count only the tokens up to the stop string
            n_gen = min(n_gen, len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        reason = "stop" if (stopped or row.eos_hit) else "length"
        return Sample(text, n_gen, float(sum(row.token_logprobs[:n_gen])), reason)

    def close(self) -> None:
        self.model = None
