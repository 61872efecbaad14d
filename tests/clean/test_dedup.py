"""Deduplicators: exact, SimHash (Data-Juicer's short-document quirk and its fix), MinHash recall/precision."""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.clean.ops.base import build_op
from steelforge.clean.ops.dedup_common import (
    _MIXED_TOKENS,
    _POLY,
    UnionFind,
    _mix64,
    duplicates_from_union_find,
    mixed_token_hashes,
    mixed_tokens,
    ngrams,
    shingle_hashes,
    shingles,
    token_hashes,
)
from steelforge.clean.ops.dedup_minhash import DocumentMinhashDeduplicator, band_keys
from steelforge.clean.ops.dedup_simhash import simhash


def _dedup(spec: dict, semantics: str, texts: list[str]) -> dict[str, str]:
    op = build_op(spec, semantics)
    ids = [f"d{i}" for i in range(len(texts))]
    return op.find_duplicates(ids, [op.signature(t) for t in texts])


def test_exact_dedup_keeps_the_first_copy() -> None:
    texts = ["a b", "c", "a b", "A B", "c"]
    assert _dedup({"document_deduplicator": {}}, "language_aware", texts) == {"d2": "d0", "d4": "d1"}
    lowered = _dedup({"document_deduplicator": {"lowercase": True}}, "language_aware", texts)
    assert lowered == {"d2": "d0", "d3": "d0", "d4": "d1"}


def test_union_find_root_is_the_earliest_position() -> None:
    uf = UnionFind(6)
    for a, b in [(5, 3), (3, 4), (4, 1)]:
        uf.union(a, b)
    assert [uf.find(i) for i in range(6)] == [0, 1, 2, 1, 1, 1]


def test_simhash_majority_vote() -> None:
    assert simhash([]) == 0
    assert simhash([0b1011, 0b0011, 0b1000]) == 0b1011
    assert simhash([1 << 63, 1 << 63, 0]) == 1 << 63


SHORT = ["hello world", "完全不同的一句中文。", "another tiny line", "短句子"]
LONG = " ".join(f"word{i}" for i in range(400))
_HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
def test_simhash_short_document_quirk_and_its_correction(semantics: str) -> None:
    texts = [*SHORT, LONG, LONG.replace(" word20 ", " other20 "), "一二三四五六七八九十" * 3]
    dups = _dedup({"document_simhash_deduplicator": {}}, semantics, texts)
    if semantics == "data_juicer":
        # Fewer than window_size space tokens: simhash 0 for all, one cluster (Data-Juicer 1.6.1 behaviour).
        assert {k: v for k, v in dups.items() if k in ("d1", "d2", "d3", "d6")} == {
            "d1": "d0",
            "d2": "d0",
            "d3": "d0",
            "d6": "d0",
        }
    else:
        assert not {"d0", "d1", "d2", "d3", "d6"} & set(dups)
    assert dups["d5"] == "d4"  # the real near duplicate is found either way


def test_simhash_language_aware_shingles_chinese_by_character() -> None:
    rng = random.Random(3)
    base = "".join(rng.choices(_HAN, k=600))
    near = base[:300] + "晚饭" + base[302:]
    other = "".join(rng.choices(_HAN, k=600))
    texts = [base, near, other]
    assert _dedup({"document_simhash_deduplicator": {}}, "language_aware", texts) == {"d1": "d0"}
    sig = build_op("document_simhash_deduplicator", "language_aware")
    assert mixed_tokens("GPT-4 是模型") == ["GPT-4", "是", "模", "型"]
    assert sig.signature("   ") is None


def test_ngram_windows_match_data_juicer_and_repeats_count() -> None:
    tokens = ["a", "b", "c"]
    assert ngrams(tokens, 3, language_aware=False) == [b"a b c"]  # exactly `window` tokens: one shingle
    assert ngrams(tokens, 4, language_aware=False) == []
    assert ngrams(tokens, 5, language_aware=True) == [b"a b c"]
    assert ngrams(["x", "y", "x", "y"], 2, language_aware=False) == [b"x y", b"y x", b"x y"]
    assert shingles(["x", "y", "x", "y"], 2, language_aware=False) == {b"x y", b"y x"}
    assert ngrams("abcd", 3, language_aware=False) == [b"abc", b"bcd"]


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_minhash_recall_and_no_merge_of_dissimilar_pairs() -> None:
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(20000)]
    texts: list[str] = []
    pairs: list[tuple[int, int]] = []
    for p in range(160):
        words = rng.choices(vocab, k=200)
        edited = list(words)
        edits = p % 16  # 0..15 changed words: Jaccard of 13-gram sets from 1.0 down to ~0.1
        for pos in rng.sample(range(200), edits):
            edited[pos] = rng.choice(vocab)
        pairs.append((len(texts), len(texts) + 1))
        texts += [" ".join(words), " ".join(edited)]
    op = build_op(
        {"document_minhash_deduplicator": {"window_size": 13, "jaccard_threshold": 0.8}}, "language_aware"
    )
    ids = [f"d{i}" for i in range(len(texts))]
    dups = op.find_duplicates(ids, [op.signature(t) for t in texts])
    assert all(dups[k] == f"d{int(k[1:]) - 1}" for k in dups), "only within-pair merges"
    high, low = [], []
    for a, b in pairs:
        j = _jaccard(op.shingle_set(texts[a]), op.shingle_set(texts[b]))
        found = dups.get(f"d{b}") == f"d{a}"
        if j >= 0.85:
            high.append(found)
        elif j < 0.6:
            low.append(found)
    assert len(high) >= 20 and len(low) >= 50
    assert sum(high) / len(high) >= 0.95
    assert not any(low)


def test_minhash_data_juicer_collapses_short_documents_language_aware_does_not() -> None:
    texts = ["one two", "三四", "five six seven"]
    spec = {"document_minhash_deduplicator": {"window_size": 5}}
    assert _dedup(spec, "data_juicer", texts) == {"d1": "d0", "d2": "d0"}
    assert _dedup(spec, "language_aware", texts) == {}
    op = build_op(spec, "language_aware")
    sig = op.signature("a b c d e f")
    assert op.signature("") is None and len(sig.values) == 4 * op.num_permutations
    assert len(sig.bands) == 8 * op.num_bands
    assert build_op(spec, "data_juicer").signature("a b c d e f").values is None  # band keys decide alone


def _minhash_reference(op: DocumentMinhashDeduplicator, ids: list[str], vectors: list) -> dict[str, str]:
    """The barrier as it was: full MinHash vectors in memory, a dict of lists per band, pairs verified
    in bucket order (data_juicer: every candidate is a duplicate)."""
    uf = UnionFind(len(ids))
    rows = op.num_rows_per_band
    present = [i for i, v in enumerate(vectors) if v is not None]
    for band in range(op.num_bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i in present:
            buckets[vectors[i][band * rows : (band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            for k, b in enumerate(members[1:], start=1):
                for a in members[:k] if op.language_aware else members[:1]:
                    if uf.find(a) == uf.find(b):
                        break
                    if not op.language_aware or np.mean(vectors[a] == vectors[b]) >= op.jaccard_threshold:
                        uf.union(a, b)
                        break
    return duplicates_from_union_find(ids, uf)


def _near_duplicate_corpus(rng: random.Random, n_bases: int) -> list[str]:
    """Random documents, each followed by edited copies (of it or of an earlier copy) and shuffled."""
    vocab = [f"w{i}" for i in range(300)]
    texts: list[str] = ["", "tiny"]
    for _ in range(n_bases):
        family = [rng.choices(vocab, k=rng.randint(20, 80))]
        for _ in range(rng.randint(0, 5)):
            words = list(rng.choice(family))
            for pos in rng.sample(range(len(words)), min(len(words), rng.randint(0, 12))):
                words[pos] = rng.choice(vocab)
            family.append(words)
        texts += [" ".join(words) for words in family]
    rng.shuffle(texts)
    return texts


def _chunked(records: list, rng: random.Random) -> list[list]:
    """The records cut into chunks of random sizes (as the pipeline's pickled batches are)."""
    chunks, at = [], 0
    while at < len(records):
        size = rng.randint(1, 40)
        chunks.append(records[at : at + size])
        at += size
    return chunks


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_minhash_band_keys_decide_as_the_full_vectors_did(semantics: str, threshold: float) -> None:
    rng = random.Random(11)
    texts = _near_duplicate_corpus(rng, 150)
    op = build_op(
        {"document_minhash_deduplicator": {"window_size": 3, "jaccard_threshold": threshold}}, semantics
    )
    ids = [f"d{i}" for i in range(len(texts))]
    vectors = [op.minhash(t) for t in texts]
    expected = _minhash_reference(op, ids, vectors)
    records = [op.record(v) for v in vectors]
    assert len(expected) > 50
    assert op.find_duplicates(ids, records) == expected
    chunks = _chunked(records, rng)
    assert op.find_duplicates_streaming(ids, lambda: iter(chunks)) == expected


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
def test_minhash_barrier_equals_dict_banding_where_buckets_overlap(semantics: str) -> None:
    """Tiny value alphabets make buckets overlap across bands, where the verification order matters."""
    rng = np.random.default_rng(5)
    spec = {"num_permutations": 24, "num_bands": 8, "num_rows_per_band": 3, "jaccard_threshold": 0.5}
    op = build_op({"document_minhash_deduplicator": spec}, semantics)
    for _ in range(40):
        n = int(rng.integers(0, 250))
        values = rng.integers(0, int(rng.integers(1, 4)), size=(n, 24)).astype(np.uint32)
        vectors = [None if semantics == "language_aware" and rng.random() < 0.1 else v for v in values]
        ids = [f"d{i}" for i in range(n)]
        assert op.find_duplicates(ids, [op.record(v) for v in vectors]) == _minhash_reference(
            op, ids, vectors
        )


def test_minhash_band_keys_are_blake2b_of_each_band() -> None:
    values = np.arange(12, dtype=np.uint32) * np.uint32(0x01020305)
    keys = band_keys(values, 3, 4)
    for band in range(3):
        data = values[band * 4 : (band + 1) * 4].astype("<u4").tobytes()
        assert keys[band * 8 : (band + 1) * 8] == hashlib.blake2b(data, digest_size=8).digest()
    assert band_keys(values, 2, 6)[:8] == band_keys(values[:6].copy(), 1, 6)


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
def test_minhash_barrier_holds_band_keys_not_signatures(semantics: str) -> None:
    """What the barrier allocates per document stays under 8 bytes per band plus a small constant
    (plus the full values of the few candidates language_aware verifies); the vectors were 4 * 256."""
    n, copies = 20_000, 40
    op = build_op({"document_minhash_deduplicator": {"window_size": 13, "jaccard_threshold": 0.8}}, semantics)
    rng = np.random.default_rng(2)
    values = rng.integers(0, 1 << 32, size=(n, op.num_permutations), dtype=np.uint64).astype(np.uint32)
    values[n - copies :] = values[:copies]  # planted duplicates: the last documents repeat the first
    chunks = [[op.record(v) for v in values[at : at + 100]] for at in range(0, n, 100)]
    ids = [f"d{i}" for i in range(n)]
    del values
    tracemalloc.start()
    try:
        found = op.find_duplicates_streaming(ids, lambda: iter(chunks))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == {f"d{n - copies + i}": f"d{i}" for i in range(copies)}
    verified = 2 * copies * 4 * op.num_permutations if op.language_aware else 0
    per_document = (peak - verified) / n
    assert per_document <= 8 * op.num_bands + 48, per_document


def test_data_juicer_space_tokens_split_on_spaces_only() -> None:
    """Data-Juicer's dedup tokenizer splits on ' ' only: newlines and tabs stay inside a token, so a
    Chinese document with a few spaces but many lines still has fewer than window_size tokens."""
    from steelforge.clean.ops.dedup_common import split_on_whitespace

    assert split_on_whitespace("a b\nc\td  e") == ["a", "b\nc\td", "e"]
    assert split_on_whitespace("第一行\n第二行\n第三行") == ["第一行\n第二行\n第三行"]


def test_mixed_tokens_stdlib_pattern_matches_regex_on_every_codepoint() -> None:
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    for start in range(0, len(every), 1 << 16):  # chunks, each checked against the `regex` original
        chunk = every[start : start + (1 << 16)] + " a\u4e00b c"
        assert mixed_tokens(chunk) == _MIXED_TOKENS.findall(chunk)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab Z1 \n\t\u3000\u00a0中文日本あアㄱ한\ud7ff\ue000.,，。"))))
def test_mixed_tokens_equal_regex_tokens(text: str) -> None:
    assert mixed_tokens(text) == _MIXED_TOKENS.findall(text)


def _shingle_hashes_reference(tokens: list[str] | str, window: int) -> np.ndarray:
    """The plain definition: BLAKE2b per token, polynomial over a sliding window, mixed, distinct."""
    n = len(tokens)
    window = min(window, n)
    if window == 0:
        return np.empty(0, dtype=np.uint64)
    ids = np.array(
        [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in tokens],
        dtype=np.uint64,
    )
    grams = np.lib.stride_tricks.sliding_window_view(ids, window)
    powers = np.array([pow(int(_POLY), k, 1 << 64) for k in range(window)], dtype=np.uint64)
    return np.unique(_mix64((grams * powers).sum(axis=1, dtype=np.uint64)))


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.lists(st.sampled_from(["a", "b", "中", "文", "word", "é"])), st.text(max_size=40)),
    st.integers(1, 8),
)
def test_shingle_hashes_equal_plain_definition(tokens: list[str] | str, window: int) -> None:
    assert np.array_equal(shingle_hashes(tokens, window), _shingle_hashes_reference(tokens, window))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=40))
def test_simhash_equals_shift_and_count(hashes: list[int]) -> None:
    bits = [sum((h >> k) & 1 for h in hashes) * 2 > len(hashes) for k in range(64)]
    assert simhash(hashes) == sum(1 << k for k, b in enumerate(bits) if b)


def _steel_texts(steel_samples_dir: Path) -> list[str]:
    from steelforge.clean.io import iter_records

    texts = [r["text"] for r in iter_records(steel_samples_dir / "2021-31_zh_head_0000_sample.jsonl")]
    wiki = json.loads((steel_samples_dir / "wikipedia-cn-20230720-filtered_sample.json").read_text("utf-8"))
    return texts + [r["completion"] for r in wiki]


def test_mixed_token_hashes_equal_hashes_of_mixed_tokens_on_steel_samples(steel_samples_dir: Path) -> None:
    for text in _steel_texts(steel_samples_dir):
        text = text.lower()
        assert np.array_equal(mixed_token_hashes(text), token_hashes(mixed_tokens(text)))


def test_mixed_token_hashes_equal_on_every_codepoint() -> None:
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    for start in range(0, len(every), 1 << 16):
        chunk = every[start : start + (1 << 16)] + " ab\u4e00c d"
        assert np.array_equal(mixed_token_hashes(chunk), token_hashes(mixed_tokens(chunk)))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab Z1 \n\t\u3000\u00a0中文日本あアㄱ한\ud7ff\ue000.,，。"))))
def test_mixed_token_hashes_equal_hashes_of_mixed_tokens(text: str) -> None:
    assert np.array_equal(mixed_token_hashes(text), token_hashes(mixed_tokens(text)))


def test_language_aware_simhash_equals_its_token_definition(steel_samples_dir: Path) -> None:
    """The signature from code points equals simhash over `shingle_hashes` of the mixed tokens."""
    op = build_op({"document_simhash_deduplicator": {}}, "language_aware")
    for text in _steel_texts(steel_samples_dir)[:300]:
        hashes = shingle_hashes(mixed_tokens(text.lower()), op.window_size)
        assert op.signature(text) == (simhash(hashes) if len(hashes) else None)


def test_shingle_hashes_with_a_window_longer_than_64_tokens() -> None:
    tokens = [f"w{i % 7}" for i in range(150)]
    assert np.array_equal(shingle_hashes(tokens, 70), _shingle_hashes_reference(tokens, 70))


def test_minhash_barrier_refuses_signatures_without_band_keys() -> None:
    from steelforge.errors import DataError

    op = build_op({"document_minhash_deduplicator": {}}, "language_aware")
    with pytest.raises(DataError, match="--force"):
        op.find_duplicates(["a", "b"], [None, np.zeros(op.num_permutations, dtype=np.uint32)])


@pytest.mark.parametrize("in_memory", [1 << 30, 0])
def test_minhash_candidate_values_in_memory_or_mapped_file_decide_alike(
    in_memory: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond `VALUES_IN_MEMORY` the candidates' MinHash values live in a mapped temporary file: same decisions."""
    import steelforge.clean.ops.dedup_minhash as dedup_minhash

    monkeypatch.setattr(dedup_minhash, "VALUES_IN_MEMORY", in_memory)
    rng = random.Random(3)
    texts = _near_duplicate_corpus(rng, 60)
    op = build_op({"document_minhash_deduplicator": {"window_size": 3}}, "language_aware")
    ids = [f"d{i}" for i in range(len(texts))]
    vectors = [op.minhash(t) for t in texts]
    expected = _minhash_reference(op, ids, vectors)
    assert expected
    assert op.find_duplicates(ids, [op.record(v) for v in vectors]) == expected


@pytest.mark.parametrize(
    ("threshold", "num_perm", "fn_weight", "expected"),
    [(0.7, 256, 0.5, (25, 10)), (0.8, 256, 0.9, (23, 11)), (0.7, 128, 0.5, (14, 9)), (0.5, 64, 0.9, (21, 3))],
)
def test_lsh_band_split_is_datasketchs_optimum(
    threshold: float, num_perm: int, fn_weight: float, expected: tuple[int, int]
) -> None:
    from steelforge.clean.ops.dedup_minhash import lsh_bands

    # Values from datasketch 2.0.0's optimiser (the split Data-Juicer 1.6.1 uses for 0.7/256 is (25, 10)).
    assert lsh_bands(threshold, num_perm, fn_weight) == expected
