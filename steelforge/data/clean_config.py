"""Recipe section `data:` — cleaning and deduplication (owned by the data pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from steelforge.config_base import StrictModel


class SourceSpec(StrictModel):
    """One input source: files matched by a glob, and how to get the text out of each record."""

    name: str = Field(description="Source name, kept in every output record and in the stats.")
    path: str | None = Field(None, description="Glob of input files (.jsonl[.gz|.zst], .json, .parquet).")
    text_field: str | None = Field("text", description="Field holding the text (e.g. text, content, completion).")


class CleanConfig(StrictModel):
    """Data-Juicer-compatible cleaning: a `process:` list of operators under their Data-Juicer names."""

    inputs: list[SourceSpec] = Field(description="Input sources.")
    semantics: Literal["data_juicer", "language_aware"] = "language_aware"
    process: list[dict[str, Any]] = Field(default_factory=list, description="Operators, in order.")
    output: Path | None = None
