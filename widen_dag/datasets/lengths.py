"""Token lengths in the student's tokenizer, for Thoughts Length Balance.

Computed here in Python with the fast (Rust) tokenizers library, batched, and joined to
the SQL models, because SQL has no tokenizer. No torch, no transformers.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl


def load_student_tokenizer(name_or_path: str, revision: str | None = None):
    from tokenizers import Tokenizer

    p = Path(name_or_path)
    if p.is_dir():
        file = p / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"student tokenizer: no tokenizer.json in {p}")
        return Tokenizer.from_file(str(file))
    return Tokenizer.from_pretrained(name_or_path, revision=revision or "main")


def count_tokens(tokenizer, texts: list[str], batch: int = 4096) -> list[int]:
    out: list[int] = []
    for i in range(0, len(texts), batch):
        encs = tokenizer.encode_batch(texts[i : i + batch], add_special_tokens=False)
        out.extend(len(e.ids) for e in encs)
    return out


def node_lengths(nodes: pl.DataFrame, tokenizer) -> pl.DataFrame:
    """(node_id, student_tokens, chars) for every node of a node table."""
    texts = nodes["text"].fill_null("").to_list()
    return pl.DataFrame(
        {
            "node_id": nodes["node_id"],
            "student_tokens": pl.Series(count_tokens(tokenizer, texts), dtype=pl.Int32),
            "chars": nodes["text"].fill_null("").str.len_chars().cast(pl.Int32),
        }
    )
