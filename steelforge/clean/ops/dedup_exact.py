"""`document_deduplicator`: exact duplicates by content hash (Data-Juicer's name and parameters)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import regex

from steelforge.clean.ops.base import Deduplicator, Semantics, register_op
from steelforge.clean.ops.dedup_common import duplicates_from_union_find, union_equal_keys

_NON_CHARACTER = regex.compile(r"[^\p{L}\p{N}]")


@register_op("document_deduplicator")
class DocumentDeduplicator(Deduplicator):
    """MD5 of the text (optionally lower-cased, optionally letters and digits only); the first copy is kept."""

    def __init__(
        self,
        lowercase: bool = False,
        ignore_non_character: bool = False,
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(semantics)
        self.lowercase = lowercase
        self.ignore_non_character = ignore_non_character

    def signature(self, text: str) -> bytes:
        if self.lowercase:
            text = text.lower()
        if self.ignore_non_character:
            text = _NON_CHARACTER.sub("", text)
        return hashlib.md5(text.encode("utf-8")).digest()

    def find_duplicates(self, ids: Sequence[str], signatures: Sequence[bytes]) -> dict[str, str]:
        return duplicates_from_union_find(ids, union_equal_keys(signatures)[0])
