"""Recipe section `pack:` — tokenize documents and pack them into a token store."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from steelforge.config_base import StrictModel


class PackConfig(StrictModel):
    inputs: list[str] | None = Field(None, description="Globs of cleaned documents (default: the data stage's output).")
    output: Path | None = None
