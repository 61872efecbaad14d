"""Word-level filters: number of words and word n-gram repetition."""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import regex

from steelforge.clean.ops._bounded import BoundedFilter
from steelforge.clean.ops._dj_tables import DJ_EMOJI_RANGES, DJ_SPECIAL_RANGES, char_class
from steelforge.clean.ops._text import HAN_CLASS, jieba_tokens, ngram_hashes
from steelforge.clean.ops.base import Semantics, register_op

_DJ_SPECIAL_CLASS = char_class(DJ_SPECIAL_RANGES, DJ_EMOJI_RANGES)
# Data-Juicer's words: split on " ", "\n", "\t"; strip special characters from both ends; drop empty
# words. One regex does all three: a word runs from its first to its last non-special character
# (space, newline and tab are special, so a match never crosses them).
_DJ_WORD = re.compile(f"[^{_DJ_SPECIAL_CLASS}](?:[^ \\n\\t]*[^{_DJ_SPECIAL_CLASS}])?")

_EDGE = r"[^\s\p{P}\p{S}\p{C}]"
_AWARE_WORD = regex.compile(f"{_EDGE}(?:\\S*{_EDGE})?")
_HAN = re.compile(f"[{HAN_CLASS}]")
_HAS_ALNUM = re.compile(r"[^\W_]")


def dj_words(text: str, lowercase: bool = False) -> list[str]:
    """Data-Juicer's `words_refinement(split_on_whitespace(text), strip_chars=SPECIAL_CHARACTERS)`.

    No language handling: a Chinese paragraph without spaces is one word.
    """
    return _DJ_WORD.findall(text.lower() if lowercase else text)


def aware_words(text: str, lowercase: bool = False) -> list[str]:
    """Words of Chinese, English or code: whitespace tokens stripped of punctuation and symbols at both
    ends; a token holding Han characters is segmented with jieba and its pieces without a letter or digit
    (punctuation) are dropped. Text without Han characters never touches jieba. `lowercase` lowercases
    the words (after segmentation).
    """
    words = _aware_words(text)
    if not lowercase:
        return list(words)
    if not words:
        return []
    # One `lower` over the words joined by "\n" equals lowering each word: "\n" is neither cased nor
    # case-ignorable (so final-sigma context stops there) and no lowercase mapping produces it. Text
    # that lowering leaves alone (most Chinese) keeps its word objects instead of splitting new ones.
    joined = "\n".join(words)
    lowered = joined.lower()
    return list(words) if lowered == joined else lowered.split("\n")


@lru_cache(maxsize=1024)
def _aware_words(text: str) -> tuple[str, ...]:
    """Cached for the last 1,024 documents: the pipeline runs each operator over a whole batch (1,000
    documents by default) before the next one, so the cache must hold a batch for `words_num_filter`
    and `word_repetition_filter` to segment each document only once.

    Consecutive whitespace tokens of the same kind are handled in one call: jieba cuts the Han tokens
    joined by a space (a space always separates jieba's blocks, so the pieces are those of each token
    plus the space, which is dropped with the other pieces without a letter or digit), and the other
    tokens joined by a space go through one `findall` (no word can span a space).
    """
    if not _HAN.search(text):
        return tuple(_AWARE_WORD.findall(text))
    words: list[str] = []
    group: list[str] = []
    group_han = False
    for token in text.split():
        han = _HAN.search(token) is not None
        if han != group_han and group:
            _flush(group, group_han, words)
            group = []
        group_han = han
        group.append(token)
    if group:
        _flush(group, group_han, words)
    return tuple(words)


def _flush(group: list[str], han: bool, words: list[str]) -> None:
    """Append the words of a run of whitespace tokens that all have (or all lack) Han characters."""
    joined = " ".join(group)
    if han:
        # `isalnum` settles the common all-letter piece without the regex (same answer when it is true)
        words.extend([w for w in jieba_tokens(joined) if w.isalnum() or _HAS_ALNUM.search(w)])
    else:
        words.extend(_AWARE_WORD.findall(joined))


def _aware_words_reference(text: str) -> tuple[str, ...]:
    """The plain definition of `_aware_words`, token by token (kept for the equivalence test)."""
    if not _HAN.search(text):
        return tuple(_AWARE_WORD.findall(text))
    words: list[str] = []
    for token in text.split():
        if _HAN.search(token):
            words.extend(w for w in jieba_tokens(token) if _HAS_ALNUM.search(w))
        else:
            words.extend(_AWARE_WORD.findall(token))
    return tuple(words)


def word_ngram_repetition(words: list[str], n: int) -> float:
    """Share of word n-gram occurrences whose n-gram occurs more than once.

    Only n-grams that can repeat are counted as tuples: each n-gram's 64-bit hash (a polynomial over
    the words' `hash`) is computed with numpy, and the exact count runs over the occurrences whose hash
    occurs more than once. Equal n-grams have equal hashes, so no repeated n-gram is missed, and a hash
    collision only adds occurrences that the exact count then sees as single: the ratio is exact.
    """
    count = len(words) - n + 1
    if count <= 0:
        return 0.0
    if count < _SMALL:
        return _repetition_of(words, range(count), n, count)
    ids = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
    grams = ngram_hashes(ids, n)
    ordered = np.sort(grams)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]  # sorted, each repeated hash at least once
    if not len(repeated):
        return 0.0
    found = repeated[np.minimum(np.searchsorted(repeated, grams), len(repeated) - 1)] == grams
    return _repetition_of(words, np.flatnonzero(found).tolist(), n, count)


_SMALL = 64  # below this many n-grams a plain Counter is faster than numpy


def _repetition_of(words: list[str], starts: Iterable[int], n: int, count: int) -> float:
    """The repetition ratio counting only the n-grams starting at `starts` (every repeated one among them)."""
    freq = Counter([tuple(words[i : i + n]) for i in starts])
    return sum(f for f in freq.values() if f > 1) / count


def _word_ngram_repetition_reference(words: list[str], n: int) -> float:
    """The plain definition (kept for the equivalence test)."""
    count = len(words) - n + 1
    if count <= 0:
        return 0.0
    freq = Counter(zip(*(words[i : i + count] for i in range(n)), strict=True))
    return sum(f for f in freq.values() if f > 1) / count


class _WordFilter(BoundedFilter):
    lowercase = False

    def __init__(self, lang: str, tokenization: bool, lo: float, hi: float, semantics: Semantics) -> None:
        super().__init__(lo, hi, semantics)
        self.lang = lang
        self.tokenization = tokenization

    def words_dj(self, text: str) -> list[str]:
        # Data-Juicer's `tokenization: true` downloads a SentencePiece model per language; steelforge never
        # downloads, so it uses the language-aware segmentation instead in both semantics.
        if self.tokenization:
            return aware_words(text, self.lowercase)
        return dj_words(text, self.lowercase)

    def words_aware(self, text: str) -> list[str]:
        return aware_words(text, self.lowercase)


@register_op("words_num_filter")
class WordsNumFilter(_WordFilter):
    """Keep documents whose number of words lies in [min_num, max_num].

    - `data_juicer`: with `tokenization: false`, `lang` is ignored and words are pieces between spaces,
      newlines and tabs with special characters stripped from both ends (no lowercasing), so a Chinese
      paragraph is one word and `min_num: 10` drops most Chinese documents.
    - `language_aware`: Chinese is segmented into words with jieba (see `aware_words`); `lang` is not needed
      because every whitespace token is checked for Han characters.
    """

    stat_key = "num_words"

    def __init__(
        self,
        lang: str = "en",
        tokenization: bool = False,
        min_num: int = 10,
        max_num: int = sys.maxsize,
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(lang, tokenization, min_num, max_num, semantics)

    def measure_dj(self, text: str) -> float:
        return len(self.words_dj(text))

    def measure_aware(self, text: str) -> float:
        return len(self.words_aware(text))


@register_op("word_repetition_filter")
class WordRepetitionFilter(_WordFilter):
    """Keep documents whose word n-gram repetition ratio lies in [min_ratio, max_ratio].

    Words are lowercased (Data-Juicer does so here, unlike `words_num_filter`); the ratio is the share of
    `rep_len`-gram occurrences whose n-gram appears more than once.
    - `data_juicer`: space-separated words, so Chinese text has few "words" and rarely any 10-gram.
    - `language_aware`: jieba words for Chinese, so repeated Chinese phrases are measured like English ones.
    """

    stat_key = "word_rep_ratio"
    lowercase = True

    def __init__(
        self,
        lang: str = "en",
        tokenization: bool = False,
        rep_len: int = 10,
        min_ratio: float = 0.0,
        max_ratio: float = 0.5,
        semantics: Semantics = "language_aware",
    ) -> None:
        if rep_len < 1:
            raise ValueError(f"rep_len must be a positive integer, not {rep_len}")
        super().__init__(lang, tokenization, min_ratio, max_ratio, semantics)
        self.rep_len = rep_len

    def measure_dj(self, text: str) -> float:
        return word_ngram_repetition(self.words_dj(text), self.rep_len)

    def measure_aware(self, text: str) -> float:
        return word_ngram_repetition(self.words_aware(text), self.rep_len)
