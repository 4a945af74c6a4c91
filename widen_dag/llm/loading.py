"""Finding a model: a local folder (bootstrapped or downloaded) or an HF hub id.

Only safetensors weights are loaded, and trust_remote_code stays off unless the profile
turns it on. A tokenizer without a chat template is an error naming the model: the search
and evaluation prompts are built from it.
"""

from __future__ import annotations

from pathlib import Path

from widen_dag.llm.base import GenerationConfigError


def resolve_model_path(model: str) -> str:
    """A local folder as an absolute path; anything else is passed on as an HF id."""
    if not model:
        raise GenerationConfigError("model: no model path or id given")
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise GenerationConfigError(f"model {model}: folder has no config.json (not an HF checkpoint)")
        pickled = list(p.glob("*.bin")) or list(p.glob("*.pt")) or list(p.glob("*.pth"))
        if pickled and not list(p.glob("*.safetensors")):
            raise GenerationConfigError(f"model {model}: only pickle weights (.bin/.pt) found; safetensors required")
        return str(p.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise GenerationConfigError(f"model path {model} does not exist")
    return model


def load_tokenizer(path: str, model: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if not tok.chat_template:
        raise GenerationConfigError(f"model {model}: its tokenizer has no chat template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
