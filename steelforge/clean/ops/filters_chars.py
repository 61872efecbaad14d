"""Character-class filters: alphanumeric ratio, special-character ratio, character n-gram repetition."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import regex

from steelforge.clean.ops._bounded import BoundedFilter
from steelforge.clean.ops._dj_tables import DJ_EMOJI_RANGES, DJ_SPECIAL_RANGES, char_class
from steelforge.clean.ops._text import HAN_CLASS, char_table, count_matches, ngram_hashes
from steelforge.clean.ops.base import Semantics, register_op

_ALNUM = re.compile(r"[^\W_]+")  # exactly str.isalnum(): CPython's \w is isalnum() plus "_"
_ALPHA = re.compile(r"[^\W\d_]+")  # str.isalpha()
_HAN = re.compile(f"[{HAN_CLASS}]+")
_DJ_SPECIAL = re.compile(f"[{char_class(DJ_SPECIAL_RANGES, DJ_EMOJI_RANGES)}]+")
# Punctuation (ASCII, CJK, full-width), symbols (math, currency, emoji, box drawing), private-use,
# unassigned and control characters other than tab/newline/carriage return.
_AWARE_SPECIAL = regex.compile(r"[\p{P}\p{S}\p{Co}\p{Cn}\p{Cs}\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+")
_HORIZONTAL_SPACE_RUN = re.compile(r"[ \t\u3000]{2,}")

HAN_CHARS_PER_WORD = 2.0
"""Chinese writes no spaces; `language_aware` adds one virtual separator per this many Han characters."""


def _token_count(text: str) -> int:
    """Number of Qwen1.5 tokens of `text` (the project's offline tokenizer; loaded on first use)."""
    from steelforge.tokenizers import load_tokenizer

    return len(load_tokenizer("qwen1.5").tokenize(text))


@register_op("alphanumeric_filter")
class AlphanumericFilter(BoundedFilter):
    """Keep documents whose alphanumeric ratio lies in [min_ratio, max_ratio].

    `tokenization: false` (statistic `alnum_ratio`):
    - `data_juicer`: characters with `str.isalnum()` (true for Han) over all characters, so Chinese prose
      scores 0.85-0.95 and `max_ratio: 0.9` drops punctuation-poor Chinese rather than symbol spam.
    - `language_aware`: letters and digits of every script count, and since Chinese puts no space between
      words, every `HAN_CHARS_PER_WORD` Han characters add one virtual separator to the denominator.
      Chinese prose then scores about 0.6, like English prose with its spaces (~0.8), and a run of Han
      characters without punctuation no longer looks like a base64 blob.
    `tokenization: true` (statistic `alpha_token_ratio`): letters over tokens. Data-Juicer downloads
    `EleutherAI/pythia-6.9b-deduped`'s tokenizer from the hub; steelforge never downloads, so both
    semantics count tokens with the project's offline Qwen1.5 tokenizer (values differ from Data-Juicer's).
    """

    def __init__(
        self,
        tokenization: bool = False,
        min_ratio: float = 0.25,
        max_ratio: float = sys.maxsize,
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(min_ratio, max_ratio, semantics)
        self.tokenization = tokenization
        self.stat_key = "alpha_token_ratio" if tokenization else "alnum_ratio"  # type: ignore[misc]
        for pattern in (_ALPHA,) if tokenization else (_ALNUM, _HAN):
            char_table(pattern)

    def measure_dj(self, text: str) -> float:
        if self.tokenization:
            tokens = _token_count(text)
            return count_matches(_ALPHA, text) / tokens if tokens else 0.0
        return count_matches(_ALNUM, text) / len(text) if text else 0.0

    def measure_aware(self, text: str) -> float:
        if self.tokenization:
            return self.measure_dj(text)
        if not text:
            return 0.0
        han = count_matches(_HAN, text)
        return count_matches(_ALNUM, text) / (len(text) + han / HAN_CHARS_PER_WORD)


@register_op("special_characters_filter")
class SpecialCharactersFilter(BoundedFilter):
    """Keep documents whose share of special characters lies in [min_ratio, max_ratio].

    - `data_juicer`: Data-Juicer's SPECIAL_CHARACTERS set: ASCII punctuation, digits, all whitespace
      (newlines included), a list of other symbols holding CJK punctuation and a few Han/kana characters
      (一 上 士 シ ッ ツ ン ー ・), and every single-code-point emoji.
    - `language_aware`: Unicode categories: punctuation (CJK and full-width included), symbols (emoji,
      math, currency, box drawing), private-use, unassigned and control characters. Digits, whitespace
      and letters of any script (Han, kana) are never special.
    """

    stat_key = "special_char_ratio"

    def __init__(
        self, min_ratio: float = 0.0, max_ratio: float = 0.25, semantics: Semantics = "language_aware"
    ) -> None:
        super().__init__(min_ratio, max_ratio, semantics)
        char_table(_DJ_SPECIAL if self.dj else _AWARE_SPECIAL)

    def measure_dj(self, text: str) -> float:
        return count_matches(_DJ_SPECIAL, text) / len(text) if text else 0.0

    def measure_aware(self, text: str) -> float:
        return count_matches(_AWARE_SPECIAL, text) / len(text) if text else 0.0  # type: ignore[arg-type]


def char_ngram_repetition(text: str, n: int) -> float:
    """Share of character n-gram occurrences taken by the most frequent repeated n-grams.

    The top `floor(sqrt(#distinct n-grams))` n-grams (only those seen more than once) over all n-grams,
    as in BigScience's filtering and Data-Juicer. n-grams are counted as 64-bit polynomial hashes of their
    code points with numpy (a collision needs billions of distinct n-grams in one document), which is
    about 8x faster than counting n-gram strings.
    """
    count = len(text) - n + 1
    if count <= 0:
        return 0.0
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    hashes = ngram_hashes(codes, n)
    freq = np.unique(hashes, return_counts=True)[1]
    repeated = freq[freq > 1]
    top = min(math.isqrt(len(freq)), len(repeated))
    if not top:
        return 0.0
    repeated.sort()
    return int(repeated[-top:].sum()) / count


@register_op("character_repetition_filter")
class CharacterRepetitionFilter(BoundedFilter):
    """Keep documents whose character n-gram repetition ratio lies in [min_ratio, max_ratio].

    - `data_juicer`: n-grams of `rep_len` code points over the raw text.
    - `language_aware`: the same statistic after collapsing runs of spaces/tabs to one space, so code
      indentation and aligned tables do not count as repeated content. A Chinese 10-gram spans about
      five words against two in English, so Chinese is not penalised by the shared `rep_len`.
    """

    stat_key = "char_rep_ratio"

    def __init__(
        self,
        rep_len: int = 10,
        min_ratio: float = 0.0,
        max_ratio: float = 0.5,
        semantics: Semantics = "language_aware",
    ) -> None:
        if rep_len < 1:
            raise ValueError(f"rep_len must be a positive integer, not {rep_len}")
        super().__init__(min_ratio, max_ratio, semantics)
        self.rep_len = rep_len

    def measure_dj(self, text: str) -> float:
        return char_ngram_repetition(text, self.rep_len)

    def measure_aware(self, text: str) -> float:
        return char_ngram_repetition(_HORIZONTAL_SPACE_RUN.sub(" ", text), self.rep_len)
