"""`language_aware` line lengths in English-equivalent characters (`unit: english_chars`).

An English sentence and its Chinese translation (hand-made pairs in data/parallel_en_zh.tsv) must measure
about the same, so a recipe's [10, 150] means the same in both scripts; a minified line and a menu list are
still rejected.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from steelforge.clean.ops.base import build_op
from steelforge.clean.ops.filters_length import AverageLineLengthFilter

PAIRS = [
    tuple(line.split("\t"))
    for line in (Path(__file__).parent / "data" / "parallel_en_zh.tsv").read_text("utf-8").splitlines()
]


def _avg(text: str, unit: str = "english_chars") -> float:
    op = build_op({"average_line_length_filter": {"unit": unit}}, "language_aware")
    return op.compute_stats(text)["avg_line_length"]


def _max(text: str, unit: str = "english_chars") -> float:
    op = build_op({"maximum_line_length_filter": {"unit": unit}}, "language_aware")
    return op.compute_stats(text)["max_line_length"]


def test_a_sentence_and_its_translation_measure_about_the_same() -> None:
    assert len(PAIRS) >= 8
    ratios = [_avg(zh) / _avg(en) for en, zh in PAIRS]
    assert all(0.8 <= r <= 1.25 for r in ratios), ratios
    assert 0.95 <= statistics.mean(ratios) <= 1.05
    # In characters the translation is 3-5x shorter: the bound would not mean the same.
    assert all(_avg(zh, "characters") < 0.35 * _avg(en, "characters") for en, zh in PAIRS)


def test_paragraph_statistics_close_across_languages() -> None:
    en = "\n".join(en for en, _ in PAIRS)
    zh = "\n".join(zh for _, zh in PAIRS)
    assert abs(_avg(zh) / _avg(en) - 1) < 0.05
    assert abs(_max(zh) / _max(en) - 1) < 0.25


def test_minified_line_and_menu_list_still_rejected() -> None:
    recipe = {"min_len": 10, "max_len": 150, "unit": "english_chars"}
    avg = build_op({"average_line_length_filter": recipe}, "language_aware")
    minified = "function a(b){return b*2}var c=" + ";".join(f"x{i}=a({i})" for i in range(300))
    zh_keywords = "最新电影免费在线观看高清下载" * 40  # one long Han line: spam, not prose
    menu_zh = "\n".join(["首页", "新闻", "体育", "娱乐", "财经", "科技", "联系我们"])
    menu_en = "\n".join(["Home", "News", "Sports", "Money", "Tech", "Contact"])
    for text in (minified, zh_keywords, menu_zh, menu_en):
        assert not avg.keep(avg.compute_stats(text)), text[:40]
    short = [(en, zh) for en, zh in PAIRS if len(en) < 150]
    assert short
    for en, zh in short:  # a sentence and its translation: kept both
        assert avg.keep(avg.compute_stats(en)) and avg.keep(avg.compute_stats(zh))


def test_non_han_text_measures_as_characters_and_unit_is_checked() -> None:
    text = "plain ascii line\nanother one"
    assert _avg(text) == _avg(text, "characters")
    assert _max("ab\ncdef") == 4
    with pytest.raises(ValueError, match="unit must be one of"):
        AverageLineLengthFilter(unit="bytes")
    dj = AverageLineLengthFilter(unit="english_chars", semantics="data_juicer")  # Data-Juicer counts characters
    assert dj.compute_stats("中文句子")["avg_line_length"] == 4
