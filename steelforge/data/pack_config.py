"""Recipe section `pack:` — tokenize documents and pack them into a token store."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from steelforge.config_base import StrictModel


class PackConfig(StrictModel):
    inputs: list[str] | None = Field(
        None, description="Globs of cleaned documents (default: the data stage's output)."
    )
    output: Path | None = None
    separator: str | None = Field(
        "<|im_end|>",
        description="Special token appended after every document (Steel-LLM uses <|im_end|>); null for none.",
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
