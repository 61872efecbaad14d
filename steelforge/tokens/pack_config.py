"""Recipe section `pack:` — tokenize documents and pack them into a token store."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from steelforge.config_base import StrictModel


class PackConfig(StrictModel):
    inputs: list[str] | None = Field(
        None, description="Globs of cleaned documents (default: the data stage's output)."
    )
    output: Path | None = None
    separator: str | None = Field(
        "auto",
        description="Special token appended after every document; `auto`: <|im_end|> when the tokenizer has it "
        "(qwen1.5, as Steel-LLM packs), else the tokenizer's EOS token (</s> for mistral-v1); null for none.",
    )
    bos: bool | Literal["auto"] = Field(
        "auto",
        description="Put the tokenizer's BOS token before every document; `auto`: when the tokenizer adds one "
        "when encoding (<s> of mistral-v1 and Llama-style tokenizers; qwen1.5 has none).",
    )
    shard_tokens: int = Field(
        1 << 25, ge=16, description="Tokens per shard (the last shard of a source may be shorter)."
    )
    num_workers: int = Field(
        1, ge=1, description="Tokenizer processes; the store is byte-identical for any number."
    )
    batch_docs: int = Field(512, ge=1, description="Documents per tokenizer batch.")
    text_field: str = Field("text", description="Record field holding the document text.")
    source_field: str = Field(
        "source", description="Record field naming the source (default: the input file's name)."
    )
