"""A GGUF model as a plain HF folder: de-quantized once, saved as safetensors, loadable by
vLLM, transformers and TRL like any other checkpoint.

transformers reads GGUF (``gguf_file=``, with the ``gguf`` package) and de-quantizes the
weights, but refuses ``save_pretrained`` on the result ("quantized with GGUF ... not
serializable"); so a plain model is built from the same config without its
``quantization_config``, the de-quantized state dict is copied in and the result saved. Its
logits equal the GGUF-loaded model's (checked here on every conversion, so a converter change
that breaks this fails loudly). A provenance file beside the weights records the GGUF's
sha256 and the converter's versions: the data version of the model assets and what lineage
traces back to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from widen_dag.storage.artifacts import MODEL_PROVENANCE, read_model_provenance

CONVERTER_VERSION = "gguf-to-hf-v1"  # bump when the conversion's output can change
_DTYPES = {"float32", "bfloat16", "float16"}


def converter_versions() -> dict[str, str]:
    import importlib.metadata

    return {
        "converter": CONVERTER_VERSION,
        "transformers": importlib.metadata.version("transformers"),
        "gguf": importlib.metadata.version("gguf"),
    }


def is_converted(folder: Path, sha256: str, dtype: str) -> bool:
    """Whether ``folder`` already holds this GGUF file's conversion in ``dtype`` by this converter."""
    prov = read_model_provenance(folder)
    return bool(
        prov
        and (folder / "config.json").is_file()
        and prov.get("gguf_sha256") == sha256
        and prov.get("dtype") == dtype
        and prov.get("converter", {}) == converter_versions()
    )


def convert(gguf_path: Path, out: Path, dtype: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """De-quantize ``gguf_path`` into the (staged) folder ``out`` as ``dtype`` safetensors with
    its tokenizer, chat template and generation config; returns the provenance written."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise RuntimeError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path}: the GGUF file carries no chat template (tokenizer.chat_template)")
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    torch_dtype = getattr(torch, dtype)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{gguf_path}: converted weights do not match the architecture (missing {missing}, extra {unexpected})"
        )
    plain.tie_weights()
    _same_logits(quantized, plain, tokenizer)
    del quantized
    plain = plain.to(torch_dtype)
    plain.config.use_cache = True
    eos = tokenizer.eos_token_id
    plain.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {
        **provenance,
        "source": "gguf",
        "dtype": dtype,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "converter": converter_versions(),
    }
    (Path(out) / MODEL_PROVENANCE).write_text(json.dumps(record, indent=2))
    return record


def _same_logits(quantized: Any, plain: Any, tokenizer: Any) -> None:
    import torch

    ids = tokenizer("The answer is 42.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = quantized(ids).logits, plain(ids).logits
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"GGUF conversion changed the logits (max diff {float((a - b).abs().max()):.3g})")
