"""`document_simhash_deduplicator` in `data_juicer` semantics: the simhash VALUE of every document and the
dedup decisions equal Data-Juicer 1.6.1's, on the four shared sources deduplicated together.

Data-Juicer 1.6.1 computes the signature with the `simhash-pybind` package (`simhash.compute` over
`simhash.unsigned_hash` of every window of `window_size` space tokens, repeats included). The literal values
below were computed with simhash-pybind 0.0.3 and Data-Juicer's `compute_hash` loop; the tests that run the
package itself skip when it is not installed (`pip install simhash-pybind`, in the `dev` extra).
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict, deque
from functools import cache

import numpy as np
import pytest
import regex
from conftest import shared_path

from steelforge.clean.ops.base import build_op

REFERENCE = ("fixtures", "dj_reference")
TEXT_PARAMS = {"tokenization": "space", "window_size": 6, "num_blocks": 6, "hamming_distance": 4}
CODE_PARAMS = {**TEXT_PARAMS, "ignore_pattern": r"\p{P}"}

# (text, simhash computed by simhash-pybind 0.0.3 through Data-Juicer 1.6.1's compute_hash).
LITERALS = [
    ("one two three four five six", 4166257608064803587),  # exactly window_size tokens: one shingle
    ("one two three four five six seven", 707205947712897794),  # last token changes the value
    ("one two three four five eight", 8103163255508044782),
    ("Ab ab ab ab ab ab ab ab cd", 9813654518874026117),  # the repeated shingle counts three times
    ("ab ab ab ab ab ab ab ab cd ef gh ij kl", 9813654475116966021),
    ("中文 一段 没有 很多 空格 的 文本", 4631961172092912224),
    ("one two three four five", 0),  # fewer than window_size tokens: no shingle
]
# (id in the shared corpus, simhash from simhash-pybind); sky:2 has exactly six space tokens.
CORPUS_LITERALS = [
    ("sky:2", 11146763231190270652),
    ("sky:63", 2076767460375233035),
    ("wiki_cn:6", 10555116834367388808),
    ("baidu_baike:4", 2152009275473625513),
    ("starcode_python:148", 5260727978776962330),
    ("sky:0", 0),
]


@cache
def _corpus() -> tuple[tuple[str, str], ...]:
    """(id, text) of the text corpus (SkyPile, wiki_cn, Baidu Baike) followed by the code corpus (StarCoder)."""
    rows = []
    for name in ("text", "code"):
        with gzip.open(shared_path(*REFERENCE, f"corpus_{name}.jsonl.gz"), "rt", encoding="utf-8") as f:
            rows += [(row["id"], row["text"]) for row in map(json.loads, f)]
    return tuple(rows)


def _dedup(params: dict, texts: list[str]) -> tuple[list[int], dict[str, str]]:
    op = build_op({"document_simhash_deduplicator": params}, "data_juicer")
    signatures = [op.signature(t) for t in texts]
    ids = [f"d{i}" for i in range(len(texts))]
    return signatures, op.find_duplicates(ids, signatures)


@pytest.mark.parametrize(("text", "value"), LITERALS)
def test_simhash_literal_values(text: str, value: int) -> None:
    op = build_op({"document_simhash_deduplicator": TEXT_PARAMS}, "data_juicer")
    assert op.signature(text) == value


def test_simhash_literal_values_on_the_shared_corpus() -> None:
    texts = dict(_corpus())
    op = build_op({"document_simhash_deduplicator": TEXT_PARAMS}, "data_juicer")
    assert [(i, op.signature(texts[i])) for i, _ in CORPUS_LITERALS] == CORPUS_LITERALS


def test_documents_differing_in_their_last_token_are_not_identical() -> None:
    a = " ".join(f"w{i}" for i in range(8))
    signatures, dups = _dedup(TEXT_PARAMS, [a, a.replace("w7", "other")])
    assert signatures[0] != signatures[1]
    six = ["alpha beta gamma delta epsilon zeta", "one two three four five six"]
    signatures, dups = _dedup(TEXT_PARAMS, six)
    assert 0 not in signatures and dups == {}  # six tokens have a shingle: no collapse into cluster 0


# --- against the real package -------------------------------------------------------------------------


def _dj_compute_hash(simhash, text: str, params: dict) -> int:
    """Data-Juicer 1.6.1 `DocumentSimhashDeduplicator.compute_hash`, tokenization 'space', verbatim."""
    text = text.lower()
    if params.get("ignore_pattern"):
        text = regex.compile(params["ignore_pattern"]).sub("", text)
    tokens = [word for word in regex.split(" ", text) if word]  # helper_func.split_on_whitespace
    window = params["window_size"]
    tokens = [str.encode(" ".join(tokens[i : i + window])) for i in range(len(tokens) - window + 1)]
    return int(np.uint64(simhash.compute(map(simhash.unsigned_hash, tokens))))


def _dj_kept(simhash, hashes: list[int], params: dict) -> list[bool]:
    """Data-Juicer 1.6.1 `DocumentSimhashDeduplicator.process`: which documents survive, in input order."""
    keys = [str(h) for h in hashes]
    matches = simhash.find_all(np.uint64(hashes), params["num_blocks"], params["hamming_distance"])
    graph: dict[str, dict[str, bool]] = defaultdict(dict)
    for x, y in matches:
        graph[str(x)][str(y)] = graph[str(y)][str(x)] = True
    hash2cluster: dict[str, int] = {}
    visited: set[str] = set()
    cluster_id = 0
    for start in set(keys):
        if start in visited or start not in graph:
            continue
        queue = deque([start])
        visited.add(start)
        hash2cluster[start] = cluster_id
        while queue:
            for neighbor in graph[queue.popleft()]:
                if neighbor not in visited:
                    visited.add(neighbor)
                    queue.append(neighbor)
                    hash2cluster[neighbor] = cluster_id
        cluster_id += 1
    seen_clusters: set[int] = set()
    seen_hashes: set[str] = set()
    kept = []
    for key in keys:
        if key not in hash2cluster:
            kept.append(key not in seen_hashes)
            seen_hashes.add(key)
        else:
            kept.append(hash2cluster[key] not in seen_clusters)
            seen_clusters.add(hash2cluster[key])
    return kept


@pytest.mark.parametrize("params", [TEXT_PARAMS, CODE_PARAMS], ids=["text-params", "code-params"])
def test_simhash_values_and_decisions_equal_data_juicer_across_sources(params: dict) -> None:
    simhash = pytest.importorskip("simhash", reason="simhash-pybind (Data-Juicer's simhash package) is absent")
    rows = _corpus()
    texts = [text for _, text in rows]
    assert len({doc_id.split(":")[0] for doc_id, _ in rows}) == 4
    ours, dups = _dedup(params, texts)
    reference = [_dj_compute_hash(simhash, text, params) for text in texts]
    wrong = [rows[i][0] for i in range(len(rows)) if ours[i] != reference[i]]
    assert not wrong, f"{len(wrong)} simhash values differ, first {wrong[:5]}"
    kept = [f"d{i}" not in dups for i in range(len(rows))]
    expected = _dj_kept(simhash, reference, params)
    differ = [rows[i][0] for i in range(len(rows)) if kept[i] != expected[i]]
    assert not differ, f"{len(differ)} decisions differ, first {differ[:5]}"
    # The cross-source cluster (documents with fewer than six space tokens) really spans sources.
    dropped_sources = {rows[int(d[1:])][0].split(":")[0] for d in dups}
    assert len(dropped_sources) >= 3 and sum(kept) < len(rows)
