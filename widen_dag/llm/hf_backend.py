"""The transformers backend: batched ``generate`` with KV cache, left padding and stop strings.

Requests with the same sampling settings are batched together (each prompt repeated n
times); stop strings are applied by ``generate`` itself (``stop_strings``) and the text is
cut at the first one afterwards, so the result matches the vLLM backend's.
"""

from __future__ import annotations

import time
from collections import defaultdict

from widen_dag.llm.base import ChatTokenizerMixin, EngineStats, GenerationRequest, Sample, cut_at_stop
from widen_dag.llm.loading import load_tokenizer, resolve_model_path


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
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model_name = model
        path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(path, model, revision=revision, trust_remote_code=trust_remote_code)
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
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
        self.stats = EngineStats()
        self._torch = torch

    def _ids(self, req: GenerationRequest) -> list[int]:
        if req.prompt_token_ids is not None:
            return list(req.prompt_token_ids)
        return self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[GenerationRequest]) -> list[list[Sample]]:
        torch = self._torch
        start = time.perf_counter()
        out: list[list[Sample]] = [[] for _ in requests]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.temperature, r.top_p, r.max_tokens, r.stop, r.include_stop)].append(i)
        # One torch generator seeded per call keeps runs reproducible for the same inputs.
        torch.manual_seed(self.seed + self.stats.calls)
        for (temperature, top_p, max_tokens, stop, include_stop), idxs in groups.items():
            flat = [(i, self._ids(requests[i])) for i in idxs for _ in range(requests[i].n)]
            for b in range(0, len(flat), self.max_batch):
                chunk = flat[b : b + self.max_batch]
                width = max(len(ids) for _, ids in chunk)
                pad = self.tokenizer.pad_token_id
                input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in chunk], device=self.device)
                mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in chunk], device=self.device)
                kwargs = dict(
                    do_sample=temperature > 0,
                    max_new_tokens=max_tokens,
                    pad_token_id=pad,
                    eos_token_id=self.tokenizer.eos_token_id,
                    return_dict_in_generate=True,
                    output_scores=True,
                )
                if temperature > 0:
                    kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
                if stop:
                    kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
                with torch.no_grad():
                    gen = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
                new = gen.sequences[:, width:]
                scores = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
                for row, (i, ids) in enumerate(chunk):
                    tokens = new[row].tolist()
                    n_gen = len(tokens)
                    eos_hit = False
                    for k, t in enumerate(tokens):
                        if t in (self.tokenizer.eos_token_id, pad):
                            n_gen, eos_hit = k, t == self.tokenizer.eos_token_id
                            break
                    text = self.tokenizer.decode(tokens[:n_gen], skip_special_tokens=True)
                    text, stopped = cut_at_stop(text, stop, include_stop)
                    if stopped:  # count only the tokens up to the stop string
                        n_gen = min(n_gen, len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
                    logprob = float(scores[row, :n_gen].float().clamp(min=-1e9).sum())
                    reason = "stop" if (stopped or eos_hit) else "length"
                    out[i].append(Sample(text, n_gen, logprob, reason))
                    self.stats.prompt_tokens += len(ids)
                    self.stats.generated_tokens += n_gen
        self.stats.requests += len(requests)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start
        return out

    def close(self) -> None:
        self.model = None
