"""The embedded demo corpus: deterministic, correctly labelled, and its noise really is what it claims."""

from __future__ import annotations

import collections
import json
import re
import time
from importlib import resources
from pathlib import Path

import pytest

from steelforge.clean import synthetic
from steelforge.clean.synthetic import NOISE_DESCRIPTIONS, NOISE_KINDS, generate_documents, write_corpus

SOURCES = {"synthetic-zh", "synthetic-en", "synthetic-code"}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return generate_documents(2000, seed=0)


def _shingles(text: str, n: int = 5) -> set[str]:
    return {text[i : i + n] for i in range(max(len(text) - n + 1, 1))}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path: Path) -> None:
    first = write_corpus(tmp_path / "a.jsonl", 300, seed=7).read_bytes()
    assert write_corpus(tmp_path / "b.jsonl", 300, seed=7).read_bytes() == first
    assert write_corpus(tmp_path / "c.jsonl", 300, seed=8).read_bytes() != first
    records = [json.loads(line) for line in first.decode("utf-8").splitlines()]
    assert records == generate_documents(300, seed=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "c.jsonl"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def broken(num_docs: int, seed: int) -> list[dict]:
        raise RuntimeError("generator failed")

    monkeypatch.setattr(synthetic, "generate_documents", broken)
    with pytest.raises(RuntimeError):
        write_corpus(tmp_path / "corpus.jsonl", 10, 0)
    assert list(tmp_path.iterdir()) == []


def test_records_and_mixture(docs) -> None:
    assert set(NOISE_DESCRIPTIONS) == set(NOISE_KINDS)
    assert all(set(d) == {"id", "text", "source", "noise"} for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)
    assert all(d["source"] in SOURCES and d["noise"] in (*NOISE_KINDS, None) for d in docs)
    by_source = collections.Counter(d["source"] for d in docs)
    assert by_source["synthetic-zh"] > 0.6 * len(docs)
    assert by_source["synthetic-en"] > 0.1 * len(docs) and by_source["synthetic-code"] > 0.05 * len(docs)


def test_noise_rate_and_every_kind_occurs(docs) -> None:
    labels = collections.Counter(d["noise"] for d in docs)
    assert 0.2 <= 1 - labels[None] / len(docs) <= 0.3
    assert all(labels[kind] >= 20 for kind in NOISE_KINDS), labels


def test_exact_duplicates_copy_an_earlier_clean_document(docs) -> None:
    clean_texts = [d["text"] for d in docs if d["noise"] is None]
    assert len(set(clean_texts)) == len(clean_texts)  # only labelled documents repeat
    seen: set[str] = set()
    for doc in docs:
        if doc["noise"] == "exact_dup":
            assert doc["text"] in seen
        elif doc["noise"] is None:
            seen.add(doc["text"])


def test_near_duplicates_are_near_but_not_exact(docs) -> None:
    earlier: list[tuple[str, set[str]]] = []
    checked = 0
    for doc in docs:
        if doc["noise"] == "near_dup":
            assert doc["text"] not in {text for text, _ in earlier}
            mine = _shingles(doc["text"])
            candidates = [s for text, s in earlier if abs(len(text) - len(doc["text"])) <= 6]
            assert max(_jaccard(mine, s) for s in candidates) >= 0.8
            checked += 1
        elif doc["noise"] is None:
            earlier.append((doc["text"], _shingles(doc["text"])))
    assert checked >= 20


_ZH_ANSWER = re.compile(
    r"^(?P<question>.+?)答：(?P<a>\d+)(?P<op>[-+×÷])(?P<b>\d+)=(?P<c>\d+)，\D*(?P<again>\d+)\D*。$"
)
_EN_ANSWER = re.compile(
    r"^(?P<question>.+?)Answer: (?P<a>\d+) (?P<op>[-+]) (?P<b>\d+) = (?P<c>\d+), \D*(?P<again>\d+)\D*\.$"
)
_ZH_FACT = re.compile(r"^(\d+)(加|乘以)(\d+)等于(\d+)，写作\1([+×])\3=\4。$")
_APPLY = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__, "÷": int.__floordiv__}


def test_arithmetic_answers_are_correct(docs) -> None:
    problems = facts = 0
    for doc in docs:
        if doc["noise"] is not None:
            continue
        for line in doc["text"].split("\n"):
            match = _ZH_ANSWER.match(line) or _EN_ANSWER.match(line)
            if match:
                a, b, c = int(match["a"]), int(match["b"]), int(match["c"])
                assert _APPLY[match["op"]](a, b) == c == int(match["again"]), line
                if match["op"] == "÷":
                    assert a % b == 0, line
                assert [int(n) for n in re.findall(r"\d+", match["question"])] == [a, b], line
                problems += 1
            elif fact := _ZH_FACT.match(line):
                a, b, c = int(fact[1]), int(fact[3]), int(fact[4])
                assert (a + b if fact[2] == "加" else a * b) == c and (fact[5] == "+") == (fact[2] == "加")
                facts += 1
            else:
                assert "答：" not in line or line.startswith("答："), f"unparsed answer line: {line}"
    assert problems > 300 and facts > 100


def test_entity_facts_are_consistent(docs) -> None:
    population: dict[str, set[str]] = collections.defaultdict(set)
    province: dict[str, set[str]] = collections.defaultdict(set)
    for doc in docs:
        if doc["noise"] is None and doc["source"] == "synthetic-zh":
            for city, value in re.findall(
                r"([\u4e00-\u9fff]{2}[市城])(?:的人口约为|约有)(\d+)万", doc["text"]
            ):
                population[city].add(value)
            for city, value in re.findall(
                r"([\u4e00-\u9fff]{2}[市城])位于(?!哪个)([\u4e00-\u9fff]{2}省)", doc["text"]
            ):
                province[city].add(value)
    assert len(population) > 100 and len(province) > 50
    assert all(len(values) == 1 for values in population.values())
    assert all(len(values) == 1 for values in province.values())


def test_noisy_documents_carry_their_noise(docs) -> None:
    import opencc

    t2s = opencc.OpenCC("t2s.json")
    symbols = re.compile(r"[^\w\s]")
    for doc in docs:
        text, kind = doc["text"], doc["noise"]
        if kind == "html":
            assert text.startswith("<html>") and "<script" in text and "</p>" in text
        elif kind == "email":
            assert re.search(r"\s[\w.]+@[\w-]+\.[a-z]{2,}\s", text)
        elif kind == "link":
            assert re.search(r"https://\S+", text)
        elif kind == "ip":
            assert re.search(r"\s(\d{1,3}\.){3}\d{1,3}\s", text)
        elif kind == "traditional":
            assert t2s.convert(text) != text
        elif kind == "spam":
            assert len(set(text)) <= 10 and len(text) >= 30
        elif kind == "too_short":
            assert len(text) < 20
        elif kind == "special_chars":
            assert len(symbols.findall(text)) / len(text) > 0.5
        elif kind is None:
            assert "@" not in text and "http" not in text and "<p>" not in text and len(text) >= 40


def test_two_thousand_documents_in_seconds() -> None:
    start = time.perf_counter()
    generate_documents(2000, seed=3)
    assert time.perf_counter() - start < 10  # ~0.5 s on one core; loose for busy machines


def test_demo_cleaning_removes_exactly_the_labelled_noise(tmp_path: Path) -> None:
    """The demo recipe's cleaning keeps every clean document untouched and handles each noise kind."""
    import yaml

    from steelforge.clean.clean_config import CleanConfig
    from steelforge.clean.io import read_shards
    from steelforge.clean.pipeline import run_pipeline

    demo = yaml.safe_load(resources.files("steelforge").joinpath("recipes", "demo.yaml").read_text("utf-8"))
    settings = demo["data"] | {"num_workers": 1}
    settings["inputs"] = [{"name": "synthetic", "synthetic": {"num_docs": 300, "seed": 5}}]
    result = run_pipeline(
        CleanConfig.model_validate(settings), tmp_path / "clean", executor="local", num_workers=1
    )
    kept = {d["id"]: d["text"] for d in read_shards(sorted(Path(result.kept_dir).glob("*.jsonl.zst")))}
    fate: dict[str | None, collections.Counter] = collections.defaultdict(collections.Counter)
    for doc in generate_documents(300, seed=5):
        if doc["id"] not in kept:
            fate[doc["noise"]]["dropped"] += 1
        else:
            fate[doc["noise"]]["unchanged" if kept[doc["id"]] == doc["text"] else "cleaned"] += 1
    assert set(fate[None]) == {"unchanged"}
    for kind in ("html", "email", "link", "ip", "traditional"):
        assert set(fate[kind]) <= {"cleaned"}, (kind, fate[kind])
    for kind in ("exact_dup", "near_dup", "spam", "too_short", "special_chars"):
        assert set(fate[kind]) <= {"dropped"}, (kind, fate[kind])
    assert sum(sum(c.values()) for kind, c in fate.items() if kind) > 50
