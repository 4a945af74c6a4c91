"""The generation protocol the search, the bootstrap and the evaluation call.

A backend takes a batch of requests (prompt text or token ids, n samples, sampling
settings, stop strings) and returns, per request, n samples with their text, generated
token count, cumulative log-probability and finish reason. Backends are created once per
stage and kept alive; their stats say how many tokens went in and out and how much of the
prompts the prefix cache served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


class GenerationConfigError(ValueError):
    """A request or backend setting that cannot work; the message names the field."""


def backend_device(device: str) -> str:
    """Where a backend asked for ``device`` (auto, cuda or cpu) runs: ``cuda`` for auto or cuda
    when torch sees a GPU, else ``cpu`` (a backend asked for cuda without one refuses to start)."""
    import torch

    return "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    include_stop: bool = True
    # Per-request sampling seed (vLLM): the same request gives the same samples in any batch.
    # The transformers backend samples from one seeded generator per call instead.
    seed: int | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise GenerationConfigError("request: give exactly one of prompt or prompt_token_ids")
        if self.n < 1:
            raise GenerationConfigError(f"request.n must be >= 1, got {self.n}")
        if self.max_tokens <= 0:
            raise GenerationConfigError(f"request.max_tokens must be > 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise GenerationConfigError(f"request.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationConfigError(f"request.top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int
    cumulative_logprob: float
    finish_reason: FinishReason


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_prompt_tokens: int = 0
    requests: int = 0
    calls: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "prefix_cache_hit_rate": round(self.prefix_cache_hit_rate, 4),
            "requests": self.requests,
            "calls": self.calls,
            "generate_seconds": round(self.seconds, 3),
            "generated_tokens_per_s": round(self.generated_tokens_per_s, 1),
            **self.extra,
        }


class ChatTokenizerMixin:
    """Prompts and token counts from the model's own tokenizer and chat template (``self.tokenizer``),
    shared by the backends."""

    tokenizer: Any

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
        return text + assistant_prefix

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


class Backend(Protocol):
    name: str
    model_name: str
    stats: EngineStats

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        """The model's chat template around one user turn, continued by ``assistant_prefix``."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]: ...

    def generate(self, requests: list[GenerationRequest]) -> list[list[Sample]]: ...

    def close(self) -> None: ...


def cut_at_stop(text: str, stop: tuple[str, ...], include_stop: bool) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string: (text, whether a stop string was found)."""
    best = -1
    hit = ""
    for s in stop:
        i = text.find(s)
        if i != -1 and (best == -1 or i < best):
            best, hit = i, s
    if best == -1:
        return text, False
    return (text[: best + len(hit)] if include_stop else text[:best]), True
