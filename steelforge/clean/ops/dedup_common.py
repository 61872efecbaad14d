"""Shared pieces of the deduplicators: shingling and deterministic cluster resolution (union-find).

Clusters are resolved by input position, never by worker or arrival order: every document joins the
cluster of the earliest document it is connected to, and that earliest document is the one kept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np
import regex

from steelforge.clean.ops._text import NGRAM_POLY, ngram_hashes

# One token per CJK character (Han, kana, Hangul); everything else splits on whitespace.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
_MIXED_TOKENS = regex.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_PUNCTUATION = regex.compile(r"\p{P}")


def split_on_whitespace(text: str) -> list[str]:
    """Data-Juicer's space tokenization for dedup: pieces between ' ' only (newlines and tabs stay inside
    a piece, as its `split_on_whitespace(new_line=False, tab=False)` does), empty pieces dropped."""
    return [piece for piece in text.split(" ") if piece]


def _stdlib_class(pattern: str) -> str:
    """The characters the `regex` class `pattern` matches, as ranges for a stdlib `re` character class."""
    codepoints = np.concatenate((np.arange(0xD800), np.arange(0xE000, 0x110000))).astype("<u4")
    every = codepoints.tobytes().decode("utf-32-le")
    parts = []
    for match in regex.finditer(f"{pattern}+", every):
        lo, hi = int(codepoints[match.start()]), int(codepoints[match.end() - 1])
        spans = [(lo, 0xD7FF), (0xE000, hi)] if lo < 0xD800 < hi else [(lo, hi)]
        parts += [f"\\U{a:08X}-\\U{b:08X}" for a, b in spans]
    return "".join(parts)


@cache
def _mixed_tokens_stdlib() -> re.Pattern[str]:
    """`_MIXED_TOKENS` rebuilt for the stdlib `re` engine (about 2x faster findall on CJK text).

    The CJK and whitespace classes are enumerated from the `regex` module's own properties, so both
    patterns match exactly the same characters.
    """
    cjk, space = _stdlib_classes()
    return re.compile(f"[{cjk}]|[^{space}{cjk}]+")


@cache
def _stdlib_classes() -> tuple[str, str]:
    """The CJK and whitespace classes of `_MIXED_TOKENS` as stdlib `re` class contents."""
    return _stdlib_class(f"[{_CJK}]"), _stdlib_class(r"\s")


def mixed_tokens(text: str) -> list[str]:
    """Language-aware tokens: each CJK character alone, other scripts by whitespace."""
    return _mixed_tokens_stdlib().findall(text)


def tokens_for(text: str, tokenization: str, language_aware: bool) -> list[str] | str:
    """Tokens to shingle: a list of words, or the text itself for character shingles."""
    if tokenization == "character":
        return text
    if tokenization == "punctuation":
        pieces = _PUNCTUATION.split(text)
        if not language_aware:
            return pieces
        return [tok for piece in pieces for tok in mixed_tokens(piece)]
    if tokenization == "space":
        return mixed_tokens(text) if language_aware else split_on_whitespace(text)
    raise ValueError(f"tokenization must be space, punctuation or character, not '{tokenization}'")


def aware_shingle_hashes(text: str, tokenization: str, window: int) -> np.ndarray:
    """Language-aware `shingle_hashes(tokens_for(text, tokenization, True), window)`; space tokens are
    hashed straight from the text's code points (`mixed_token_hashes`)."""
    if tokenization == "space":
        return gram_hashes(mixed_token_hashes(text), window)
    return shingle_hashes(tokens_for(text, tokenization, True), window)


def ngrams(tokens: list[str] | str, window: int, *, language_aware: bool) -> list[bytes]:
    """Every n-gram of `tokens` in order, repeats included, as UTF-8 bytes (words joined by a space).

    The windows start at 0 .. len(tokens) - window, as in Data-Juicer 1.6.1's SimHash and MinHash loops
    (`range(len(tokens) - window_size + 1)`): a document of exactly `window` tokens has one n-gram, one
    with fewer has none. Language-aware mode shortens the window to the document's length, so only a
    document without any token has none.
    """
    n = len(tokens)
    if language_aware:
        window = min(window, n)
        if window == 0:
            return []
    joiner = "" if isinstance(tokens, str) else " "
    return [joiner.join(tokens[i : i + window]).encode("utf-8") for i in range(max(n - window + 1, 0))]


def shingles(tokens: list[str] | str, window: int, *, language_aware: bool) -> set[bytes]:
    """Distinct n-gram shingles (`ngrams` as a set: MinHash signs a set, repeats do not count)."""
    return set(ngrams(tokens, window, language_aware=language_aware))


_POLY = np.uint64(NGRAM_POLY)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole 64-bit word (vectorised)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_TOKEN_HASHES: dict[str, int] = {}
_TOKEN_HASHES_MAX = 1 << 20  # ~100 MB at most; CJK characters and common words stay cached across documents


def token_hash(token: str) -> int:
    """A token's 64-bit hash: the first 8 bytes of its BLAKE2b digest, little-endian."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def token_hashes(tokens: list[str] | str) -> np.ndarray:
    """`token_hash` of every token as uint64, each distinct token hashed once per process (cached)."""
    cache = _TOKEN_HASHES
    missing = set(tokens).difference(cache)  # C loop over the document's tokens, not the cache
    if missing:
        if len(cache) + len(missing) > _TOKEN_HASHES_MAX:
            cache.clear()
            missing = set(tokens)
        cache.update(zip(missing, map(token_hash, missing), strict=True))
    return np.fromiter(map(cache.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def shingle_hashes(tokens: list[str] | str, window: int) -> np.ndarray:
    """Distinct 64-bit hashes of the n-grams of `tokens`, computed with numpy instead of joined strings.

    Each distinct token is hashed once (BLAKE2b, 8 bytes, see `token_hashes`); an n-gram is the
    polynomial combination of its tokens' hashes (order matters, uint64 arithmetic wraps), then mixed.
    The window shrinks to the document's length, so only a document without tokens has no shingle (the
    language-aware rule).
    """
    if min(window, len(tokens)) == 0:
        return np.empty(0, dtype=np.uint64)
    return gram_hashes(token_hashes(tokens), window)


def gram_hashes(ids: np.ndarray, window: int) -> np.ndarray:
    """`shingle_hashes` from the tokens' hashes `ids` (uint64, in token order)."""
    n = len(ids)
    window = min(window, n)
    if window == 0:
        return np.empty(0, dtype=np.uint64)
    return _distinct(_mix64(ngram_hashes(ids, window)))


@cache
def _char_classes() -> np.ndarray:
    """Class of every code point for `mixed_tokens`: 0 whitespace, 1 other, 2 CJK (one token per character).

    Taken from the stdlib pattern itself (each class matched over a string of every code point,
    surrogates included), so the classes agree with `mixed_tokens` by construction.
    """
    every = np.arange(0x110000, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    classes = np.ones(0x110000, dtype=np.uint8)
    cjk, space = _stdlib_classes()
    for pattern, value in ((f"[{space}]+", 0), (f"[{cjk}]+", 2)):
        for match in re.finditer(pattern, every):
            classes[match.start() : match.end()] = value
    return classes


def warm_token_tables() -> None:
    """Build `mixed_token_hashes`' class table now: workers forked from the pipeline inherit it."""
    _char_classes()


_CHAR_HASHES = np.zeros(0x110000, dtype=np.uint64)  # `token_hash(chr(c))`, filled on first use; 0 = not yet


@cache
def _long_runs() -> re.Pattern[str]:
    """Maximal runs of at least two non-CJK, non-space characters (the multi-character `mixed_tokens`)."""
    cjk, space = _stdlib_classes()
    return re.compile(f"[^{space}{cjk}]{{2,}}")


def mixed_token_hashes(text: str) -> np.ndarray:
    """`token_hashes(mixed_tokens(text))` without building a string per CJK character.

    The text is read as an array of code points: tokens start at every CJK character and at the first
    character of every run of other non-space characters. One-character tokens (CJK characters, single
    punctuation marks) take their hash from a per-code-point table; only the longer runs are cut out as
    strings (one `findall`) and hashed through the token cache. Same hashes, same order.
    """
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if not len(cp):
        return np.empty(0, dtype=np.uint64)
    cls = _char_classes()[cp]
    other = cls == 1
    follows_other = np.zeros(len(cp), dtype=bool)
    follows_other[1:] = other[:-1]
    run_start = other & ~follows_other
    pos = np.flatnonzero(run_start | (cls == 2))
    hashes = _CHAR_HASHES[cp[pos]]
    unknown = hashes == 0
    if unknown.any():
        for c in np.unique(cp[pos][unknown]).tolist():
            _CHAR_HASHES[c] = token_hash(chr(c))
        hashes = _CHAR_HASHES[cp[pos]]
    long_start = run_start.copy()
    long_start[:-1] &= other[1:]
    long_start[-1] = False
    if long_start.any():
        hashes[long_start[pos]] = token_hashes(_long_runs().findall(text))
    return hashes


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (what `np.unique` returns, with less overhead for small arrays)."""
    values = np.sort(values)
    keep = np.empty(len(values), dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


class UnionFind:
    """Disjoint sets over positions 0..n-1 whose root is always the smallest position (the kept doc)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def duplicates_from_pairs(ids: Sequence[str], pairs: Iterable[tuple[int, int]]) -> dict[str, str]:
    """Connected components over matching pairs -> {duplicate id: id of the first document of its cluster}."""
    uf = UnionFind(len(ids))
    for a, b in pairs:
        uf.union(a, b)
    return duplicates_from_union_find(ids, uf)


def duplicates_from_union_find(ids: Sequence[str], uf: UnionFind) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(len(ids)):
        root = uf.find(i)
        if root != i:
            out[ids[i]] = ids[root]
    return out


def union_equal_keys(keys: Sequence[object | None]) -> tuple[UnionFind, dict[object, int]]:
    """Union-find joining positions with equal non-None keys (exact matches), and each key's first position."""
    uf = UnionFind(len(keys))
    first: dict[object, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        j = first.setdefault(key, i)
        if j != i:
            uf.union(j, i)
    return uf, first


def duplicates_among(ids: Sequence[str], positions: np.ndarray, uf: UnionFind) -> dict[str, str]:
    """`duplicates_from_union_find` for a union-find over `positions` (sorted input positions) only.

    Ranks keep the input order, so each cluster's root is still its earliest document.
    """
    out: dict[str, str] = {}
    pos = positions.tolist()
    for i, p in enumerate(pos):
        root = uf.find(i)
        if root != i:
            out[ids[p]] = ids[pos[root]]
    return out


def equal_key_groups(keys: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions sharing their key with another valid position: `(members, sizes)`.

    One stable sort instead of a dict of lists: `members` holds the groups back to back, each in input
    order, the groups ordered by their first position (the order a dict filled in input order gives);
    `sizes` is each group's length. Positions with a unique key are left out.
    """
    order = np.argsort(keys, kind="stable")
    if valid is not None:
        order = order[valid[order]]
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    del sorted_keys
    after = np.zeros(len(order), dtype=bool)  # equal to the next key
    after[:-1] = same
    before = np.zeros(len(order), dtype=bool)  # equal to the previous key
    before[1:] = same
    grouped = after | before
    members = order[grouped]
    heads = (after & ~before)[grouped]
    del order, same, after, before, grouped
    starts = np.flatnonzero(heads)
    sizes = np.diff(starts, append=len(members))
    first = members[starts]
    by_first = np.argsort(np.repeat(first, sizes), kind="stable")
    return members[by_first], sizes[np.argsort(first)]
