"""Recipe section `data:` — cleaning and deduplication (owned by the data pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from steelforge.config_base import StrictModel

# Steel-LLM's Baidu Baike text: title + "：" + summary, then "\n" + section title + "：" + content per section.
BAIDU_BAIKE = {
    "template": "{title}：{summary}",
    "list_field": "sections",
    "item_template": "\n{title}：{content}",
}
FORMATS: dict[str, dict[str, str]] = {"baidu_baike": BAIDU_BAIKE}


class SyntheticSpec(StrictModel):
    """The embedded demo corpus (`steelforge.clean.synthetic`), written under `<out_dir>/raw/` first."""

    num_docs: int = Field(ge=1, description="Number of generated documents.")
    seed: int = Field(0, description="Generator seed (same seed, same corpus).")


class SourceSpec(StrictModel):
    """One input source: files matched by a glob, and how to get the text out of each record."""

    name: str = Field(description="Source name, kept in every output record and in the stats.")
    path: str | list[str] | None = Field(
        None, description="Glob (or list of globs) of input files (.jsonl[.gz|.zst], .json, .parquet)."
    )
    text_field: str | None = Field(
        "text", description="Field holding the text (e.g. text, content, completion)."
    )
    template: str | None = Field(
        None,
        description="Python format string over a record's fields, e.g. '{title}：{summary}' (replaces text_field).",
    )
    list_field: str | None = Field(
        None, description="A list field whose items are appended with item_template."
    )
    item_template: str | None = Field(None, description="Format string for each item of list_field.")
    format: Literal["baidu_baike"] | None = Field(
        None,
        description="A named template: baidu_baike = title：summary + '\\n' + title：content per section.",
    )
    id_field: str | None = Field(None, description="Field holding the id; else '<source>:<file stem>:<row>'.")
    source_field: str | None = Field(None, description="Field naming each record's own source (else `name`).")
    synthetic: SyntheticSpec | None = Field(
        None, description="Generate the demo corpus instead of reading files."
    )

    @model_validator(mode="after")
    def _one_input(self) -> SourceSpec:
        if self.format is not None:
            preset = FORMATS[self.format]
            for key, value in preset.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)
        if (self.path is None) == (self.synthetic is None):
            raise ValueError(f"source '{self.name}' needs exactly one of 'path' (a glob) or 'synthetic'")
        if (self.list_field is None) != (self.item_template is None):
            raise ValueError(f"source '{self.name}': 'list_field' and 'item_template' go together")
        if self.list_field is not None and self.template is None:
            raise ValueError(
                f"source '{self.name}': 'list_field' needs a 'template' for the record's own text"
            )
        return self

    def globs(self) -> list[str]:
        if self.path is None:
            return []
        return [self.path] if isinstance(self.path, str) else list(self.path)


class CleanConfig(StrictModel):
    """Data-Juicer-compatible cleaning: a `process:` list of operators under their Data-Juicer names."""

    inputs: list[SourceSpec] = Field(description="Input sources.")
    semantics: Literal["data_juicer", "language_aware"] = "language_aware"
    process: list[dict[str, Any]] = Field(default_factory=list, description="Operators, in order.")
    output: Path | None = None
    num_workers: int = Field(
        1, ge=1, description="Local worker processes (outputs are identical for any number)."
    )
    executor: Literal["local", "ray"] = Field("local", description="local process pool, or Ray Data tasks.")
    batch_size: int = Field(1000, ge=1, description="Documents per task sent to a worker.")
    shard_max_docs: int | None = Field(
        None, ge=1, description="Start a new kept shard after this many documents."
    )
    shard_max_bytes: int = Field(256 << 20, ge=1, description="Start a new kept shard after this many bytes.")
    trace: int = Field(0, ge=0, description="Show this many before/after examples per mapper.")

    @model_validator(mode="after")
    def _unique_names(self) -> CleanConfig:
        names = [s.name for s in self.inputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"input source name '{dup[0]}' is used twice; give each source its own name")
        return self
