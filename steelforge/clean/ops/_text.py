"""Text helpers shared by the cleaning operators: script detection, Chinese words, fast counting.

Everything here is cheap per document: regexes are compiled once, the word segmenter is loaded once per process
(lazily and without its start-up chatter), and characters are counted with per-code-point tables and numpy
rather than Python loops over characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import rjieba

from steelforge.clean.ops.base import SEMANTICS

# Han ideographs: CJK Unified Ideographs, Extension A, compatibility ideographs and the supplementary
# planes' extensions (B..H). Radicals and CJK punctuation are not Han characters.
HAN_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
KANA_CLASS = "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9d"

_HAN_RUN = re.compile(f"[{HAN_CLASS}]+")
_LETTER_RUN = re.compile(r"[^\W\d_]+")

ZH_HAN_SHARE = 0.3
"""A document counts as Chinese when at least this share of its letters are Han characters."""


def count_matches(pattern: Any, text: str) -> int:
    """How many characters of `text` the single-character-class `pattern` (`re` or `regex`) matches.

    Counted with numpy: the text's code points index a table of the class (`char_table`), several
    times faster than a regex pass over the text.
    """
    return int(np.count_nonzero(char_table(pattern)[code_points(text)]))


def delete_matches(pattern: Any, text: str) -> str:
    """`pattern.sub("", text)` for a `pattern` that matches single characters, by numpy: the code points
    the class does not hold are kept (about 2.5x faster on CJK text)."""
    points = code_points(text)
    kept = points[~char_table(pattern)[points]]
    return text if len(kept) == len(points) else kept.tobytes().decode("utf-32-le", "surrogatepass")


def count_matches_reference(pattern: Any, text: str) -> int:
    """The definition of `count_matches`: the characters a substitution removes (kept for the tests)."""
    return len(text) - len(pattern.sub("", text))


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


_CHAR_TABLES: dict[Any, np.ndarray] = {}


def char_table(pattern: Any) -> np.ndarray:
    """For every code point, whether the single-character-class `pattern` matches it (built once per
    pattern and process: one substitution over a string of every code point leaves those it does not
    match). Operators ask for their tables when they are built, so the process pool's workers, forked
    after that, inherit them instead of each building its own."""
    table = _CHAR_TABLES.get(pattern)
    if table is None:
        every = np.arange(0x110000, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
        table = np.ones(0x110000, dtype=bool)
        table[code_points(pattern.sub("", every))] = False
        _CHAR_TABLES[pattern] = table
    return table


def han_share(text: str) -> float:
    """Share of Han characters among the letters of `text` (0.0 when it has no letters).

    Python's `str.isalpha` is true for Han, so the denominator is every letter of every script:
    a Chinese article with English terms scores about 0.9, English or code with Chinese comments far
    below 0.3.
    """
    points = code_points(text)
    letters = int(np.count_nonzero(char_table(_LETTER_RUN)[points]))
    if not letters:
        return 0.0
    return int(np.count_nonzero(char_table(_HAN_RUN)[points])) / letters


def warm_script_tables() -> None:
    """Build `han_share`'s tables now (see `char_table`: workers forked later inherit them)."""
    char_table(_LETTER_RUN)
    char_table(_HAN_RUN)


def is_chinese(text: str) -> bool:
    """Script-based language check: Chinese when Han characters make up at least 30% of the letters.

    Cheap (two regex passes) and good enough to choose a word segmenter; it is not a language-ID model
    (that is `language_id_filter`'s job).
    """
    return han_share(text) >= ZH_HAN_SHARE


def jieba_tokens(text: str) -> list[str]:
    """jieba's segmentation of `text`, dictionary only (no HMM: word counts barely move).

    Runs on `rjieba` (jieba-rs: jieba's dictionary and algorithm in Rust). With HMM off it gives the same
    words as Python jieba (identical on 300 SkyPile documents) at ~18x the speed, which is what keeps the
    language-aware word filters from dominating a cleaning run.
    """
    return rjieba.cut(text, False)


# English characters per Chinese jieba word: English's mean word length (4.7 letters) plus a space is 5.7
# characters per English word, and a translation has ~1.3 English words per jieba word (English spells out the
# articles, prepositions and auxiliaries Chinese leaves implicit). Measured on the hand-made parallel pairs in
# tests/clean/data/parallel_en_zh.tsv: 7.37 (mean and median; 6.1-8.8 per pair).
ENGLISH_CHARS_PER_ZH_WORD = 7.4


def english_equivalent_length(line: str) -> float:
    """A line's length in English-equivalent characters: every Han run counts `ENGLISH_CHARS_PER_ZH_WORD`
    per jieba word (what its English translation would take), every other character counts one.

    An English sentence and its Chinese translation then measure about the same, so a bound such as
    [10, 150] means the same in both scripts.
    """
    runs = _HAN_RUN.findall(line)
    if not runs:
        return float(len(line))
    han = sum(map(len, runs))
    words = sum(len(rjieba.cut(run, False)) for run in runs)
    return len(line) - han + ENGLISH_CHARS_PER_ZH_WORD * words


NGRAM_POLY = 0x100000001B3  # odd multiplier of the rolling n-gram combination (FNV prime)


@lru_cache(maxsize=256)
def _ngram_power(k: int) -> np.uint64:
    """`NGRAM_POLY ** k` modulo 2**64 (the weight of the k-th token of an n-gram)."""
    return np.uint64(pow(NGRAM_POLY, k, 1 << 64))


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """The 64-bit polynomial hash of every window of `n` consecutive token hashes `ids` (uint64, in order):
    `sum(ids[i + k] * NGRAM_POLY**k)`, wrapping. One routine for the character and word repetition filters
    and the deduplicators' n-grams; empty when there are fewer than `n` ids."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    grams = ids[:count].astype(np.uint64, copy=True)
    for k in range(1, n):
        grams += ids[k : k + count] * _ngram_power(k)
    return grams


def dj_round(value: float) -> float:
    """Data-Juicer stores float statistics rounded to 10 decimals and decides on the rounded value."""
    return round(value, 10)


def check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {', '.join(SEMANTICS)}, not {semantics!r}")
    return semantics


def strip_r_quotes(pattern: str | None) -> str | None:
    """Data-Juicer accepts a pattern written as `r'...'` inside YAML and strips the `r'`/`'` wrapper."""
    if pattern is not None and len(pattern) > 2 and pattern[-1] == pattern[1] and pattern[:2] in ("r'", 'r"'):
        return pattern[2:-1]
    return pattern


def code_point_class(code_points: Iterable[int]) -> str:
    """A regex character class of exactly these code points (escaped, any character allowed)."""
    return "[" + "".join(f"\\U{cp:08X}" for cp in sorted(code_points)) + "]"


class SparseTranslator:
    """`str.translate(table)` by a regex split on the characters that change: same result, but only those
    characters go through Python, several times faster on CJK text where `translate` looks up every character
    (and ~1.4x faster than a substitution with a replacement function). A class rather than a closure so
    that operators holding one can be pickled for worker processes."""

    def __init__(self, table: dict[int, str | int | None]) -> None:
        changes = {cp: "" if v is None else chr(v) if isinstance(v, int) else v for cp, v in table.items()}
        self.changes = {cp: v for cp, v in changes.items() if v != chr(cp)}
        self._by_char = {chr(cp): v for cp, v in self.changes.items()}
        self.pattern = re.compile(f"({code_point_class(self.changes)})") if self.changes else None

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        parts = self.pattern.split(text)  # text, changed char, text, changed char, ..., text
        if len(parts) == 1:
            return text
        parts[1::2] = map(self._by_char.__getitem__, parts[1::2])
        return "".join(parts)


def sparse_translator(table: dict[int, str | int | None]) -> Callable[[str], str]:
    """A picklable callable equal to `lambda text: text.translate(table)`, faster on CJK text."""
    return SparseTranslator(table)
