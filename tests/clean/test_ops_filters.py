"""Filters in both semantics: Data-Juicer's statistics and quirks, and the language-aware corrections."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.clean.ops import Filter, build_op
from steelforge.clean.ops._text import han_share, is_chinese
from steelforge.clean.ops.filters_chars import char_ngram_repetition
from steelforge.clean.ops.filters_words import (
    _aware_words,
    _aware_words_reference,
    _word_ngram_repetition_reference,
    aware_words,
    word_ngram_repetition,
)
from steelforge.errors import RecipeError

FILTERS = [
    "alphanumeric_filter",
    "average_line_length_filter",
    "character_repetition_filter",
    "maximum_line_length_filter",
    "special_characters_filter",
    "text_length_filter",
    "words_num_filter",
    "word_repetition_filter",
]

ZH = "北京是中华人民共和国的首都，也是全国的政治、文化中心。城市历史悠久，名胜古迹众多，每年吸引大量游客前来参观"
EN = "The quick brown fox jumps over the lazy dog. It was not amused, and it said so loudly."


def make(name: str, semantics: str, **params: object) -> Filter:
    op = build_op({name: params}, semantics=semantics)  # type: ignore[arg-type]
    assert isinstance(op, Filter)
    return op


def stat(name: str, semantics: str, text: str, **params: object) -> float:
    op = make(name, semantics, **params)
    return next(iter(op.compute_stats(text).values()))


def test_alphanumeric_data_juicer_counts_han_as_alnum() -> None:
    ratio = stat("alphanumeric_filter", "data_juicer", ZH)
    assert ratio == round(sum(c.isalnum() for c in ZH) / len(ZH), 10)
    assert ratio > 0.9  # punctuation-poor Chinese prose breaks max_ratio 0.9 ...
    assert not make("alphanumeric_filter", "data_juicer", max_ratio=0.9).keep({"alnum_ratio": ratio})


def test_alphanumeric_language_aware_does_not_penalise_chinese() -> None:
    op = make("alphanumeric_filter", "language_aware", min_ratio=0.2, max_ratio=0.9)
    assert op.keep(op.compute_stats(ZH))  # ... but is kept here, like English prose
    assert op.keep(op.compute_stats(EN))
    assert not op.keep(op.compute_stats("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789abcdef"))  # a blob
    assert not op.keep(op.compute_stats("%%%%%!!!!!#####*****~~~~~中"))


def test_alphanumeric_tokenization_uses_qwen_tokenizer() -> None:
    tokenizer_module = pytest.importorskip("steelforge.tokenizers")
    tokens = len(tokenizer_module.load_tokenizer("qwen1.5").tokenize(EN))
    op = make("alphanumeric_filter", "data_juicer", tokenization=True)
    assert op.compute_stats(EN) == {"alpha_token_ratio": round(sum(c.isalpha() for c in EN) / tokens, 10)}


def test_special_characters_data_juicer_set() -> None:
    # digits, newline, CJK punctuation, emoji and the Han/kana members of its list are special
    assert stat("special_characters_filter", "data_juicer", "12\n，😀一上ン字") == round(8 / 9, 10)
    assert stat("special_characters_filter", "language_aware", "12\n，😀一上ン字") == 2 / 9


def test_special_characters_language_aware_on_prose_and_code() -> None:
    assert stat("special_characters_filter", "language_aware", "2024年3月1日") == 0.0
    assert stat("special_characters_filter", "language_aware", "你好，世界。") == 2 / 6
    assert stat("special_characters_filter", "language_aware", "a\u00a0b\tc") == 0.0


def test_words_num_data_juicer_treats_chinese_paragraph_as_one_word() -> None:
    assert stat("words_num_filter", "data_juicer", ZH, lang="zh") == 1
    # digits are special characters, so "1" and "2" vanish like "..." and "--"
    assert stat("words_num_filter", "data_juicer", "Hello, World! ... -- 1 2") == 2
    assert stat("words_num_filter", "data_juicer", "Hello World a1") == 3


def test_words_num_language_aware_segments_chinese() -> None:
    n = stat("words_num_filter", "language_aware", ZH, lang="zh")
    assert 20 <= n <= 40
    assert stat("words_num_filter", "language_aware", EN) == 18
    assert stat("words_num_filter", "language_aware", "我爱北京 hello world") == 5


def test_words_num_lowercasing_differs_between_the_two_word_filters() -> None:
    # words_num_filter does not lowercase: "Г" (a capital in Data-Juicer's special list) is stripped ...
    assert stat("words_num_filter", "data_juicer", "Г x") == 1
    # ... while word_repetition_filter lowercases first, so "г" survives as a word (2 words, 1 bigram)
    assert stat("word_repetition_filter", "data_juicer", "Г x Г x Г x", rep_len=2) == 1.0


def test_word_repetition_counts_repeated_ngrams() -> None:
    text = "a b c a b c a b c d"
    # bigrams: ab bc ca ab bc ca ab bc cd -> repeated occurrences 8 of 9
    assert stat("word_repetition_filter", "data_juicer", text, rep_len=2) == round(8 / 9, 10)
    assert stat("word_repetition_filter", "data_juicer", "A B a b", rep_len=2) == round(2 / 3, 10)
    zh = "我们今天去公园。" * 6
    assert stat("word_repetition_filter", "data_juicer", zh, rep_len=3) == 0.0  # one "word": no 3-gram
    assert stat("word_repetition_filter", "language_aware", zh, rep_len=3) > 0.8


def test_defaults_that_filter() -> None:
    assert not make("maximum_line_length_filter", "data_juicer", max_len=1000).keep({"max_line_length": 9})
    assert not make("text_length_filter", "data_juicer", max_len=96714).keep({"text_len": 9})
    assert make("character_repetition_filter", "data_juicer").rep_len == 10  # type: ignore[attr-defined]
    assert make("word_repetition_filter", "data_juicer").rep_len == 10  # type: ignore[attr-defined]


def test_average_line_length_counts_newlines_in_data_juicer() -> None:
    text = "abcd\nefgh\n"
    assert stat("average_line_length_filter", "data_juicer", text) == 5.0
    assert stat("average_line_length_filter", "language_aware", text) == 4.0
    assert stat("average_line_length_filter", "data_juicer", "ab\x0ccd") == 2.5  # splitlines breaks at \f
    assert stat("average_line_length_filter", "language_aware", "ab\x0ccd") == 5.0
    assert stat("maximum_line_length_filter", "language_aware", "ab\r\ncdef\n") == 4


def test_character_repetition() -> None:
    assert (
        stat("character_repetition_filter", "data_juicer", "abcabcabcabc", rep_len=3) == 0.4
    )  # top-1 of 3 distinct
    assert stat("character_repetition_filter", "data_juicer", "abcdefgh", rep_len=3) == 0.0
    assert stat("character_repetition_filter", "data_juicer", "ab", rep_len=3) == 0.0
    code = "def f():\n" + "".join(f"        x{i} = {i}\n" for i in range(6))
    assert stat("character_repetition_filter", "language_aware", code) < stat(
        "character_repetition_filter", "data_juicer", code
    )


def test_statistics_are_rounded_before_the_decision_in_data_juicer() -> None:
    text = "a" * 9 + "!" * 2 + "b" * 0  # alnum ratio 9/11 = 0.818181818181...
    op = make("alphanumeric_filter", "data_juicer", max_ratio=0.8181818182)
    stats = op.compute_stats(text)
    assert stats == {"alnum_ratio": 0.8181818182}
    assert op.keep(stats)
    aware = make("alphanumeric_filter", "language_aware", min_ratio=0.8181818182)
    assert not aware.keep(aware.compute_stats(text))  # unrounded 0.81818181818... < bound


def test_explain_names_the_broken_bound() -> None:
    op = make("words_num_filter", "language_aware", min_num=10, max_num=100)
    stats = op.compute_stats("too short")
    assert not op.keep(stats)
    assert op.explain(stats) == {"stat": "num_words", "value": 2, "min": 10, "max": 100}
    assert make("text_length_filter", "language_aware").explain({"text_len": 3})["max"] == sys.maxsize


def test_bad_parameters_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match="min_ratio"):
        build_op({"alphanumeric_filter": {"min_ratio": 0.9, "max_ratio": 0.1}}, semantics="data_juicer")
    with pytest.raises(RecipeError, match="rep_len"):
        build_op({"word_repetition_filter": {"rep_len": 0}}, semantics="data_juicer")
    with pytest.raises(RecipeError, match="no parameter 'max_words'"):
        build_op({"words_num_filter": {"max_words": 3}}, semantics="data_juicer")


def test_script_detection() -> None:
    assert is_chinese(ZH) and han_share(ZH) == 1.0
    assert not is_chinese(EN)
    assert is_chinese("北京的 API 很好用，我们一起用吧")
    assert not is_chinese("def f():\n    return 1  # 返回")
    assert han_share("123 ...") == 0.0


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
@settings(max_examples=25, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab A1.。，!\n\t中文字一😀 ")), max_size=80))
def test_ratios_stay_in_unit_interval(semantics: str, text: str) -> None:
    for name in FILTERS:
        op = make(name, semantics)
        stats = op.compute_stats(text)
        value = next(iter(stats.values()))
        assert value >= 0
        if name.endswith(("ratio_filter", "repetition_filter", "characters_filter", "alphanumeric_filter")):
            assert value <= 1
        assert isinstance(op.keep(stats), bool)


def _reference_char_repetition(text: str, n: int) -> float:
    """Data-Juicer's definition, spelled out with a Counter of n-gram strings."""
    freq = sorted(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
    if not freq:
        return 0.0
    top = min(int(len(freq) ** 0.5), len(freq) - freq.count(1))
    return sum(freq[:top]) / sum(freq)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab 中文😀\n")), max_size=200), n=st.integers(1, 12))
def test_hashed_char_repetition_matches_the_definition(text: str, n: int) -> None:
    assert char_ngram_repetition(text, n) == pytest.approx(_reference_char_repetition(text, n), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            list("中文字词语北京大学 \n\t\x1c\u3000\u00a0ab AB1 2.,，。、！?-_#&%+\"'ΣσÉé()（）【】")
        ),
        max_size=80,
    )
)
def test_grouped_aware_words_equal_token_by_token(text: str) -> None:
    assert _aware_words.__wrapped__(text) == _aware_words_reference(text)
    assert aware_words(text, lowercase=True) == [w.lower() for w in _aware_words_reference(text)]


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.sampled_from(["a", "b", "c", "中文", "词"]), max_size=400),
    n=st.integers(1, 12),
)
def test_hashed_word_repetition_equals_the_definition(words: list[str], n: int) -> None:
    """Long lists take the hashed path (candidates by 64-bit n-gram hash, exact count over them)."""
    assert word_ngram_repetition(words, n) == _word_ngram_repetition_reference(words, n)
    longer = [*words, *(f"w{i}" for i in range(100)), *words]  # always past the plain-Counter size
    assert word_ngram_repetition(longer, n) == _word_ngram_repetition_reference(longer, n)


def _counted_patterns() -> list:
    from steelforge.clean.ops import _text, filters_chars, mappers_normalize, mappers_sentences

    return [
        filters_chars._ALNUM,
        filters_chars._ALPHA,
        filters_chars._HAN,
        filters_chars._DJ_SPECIAL,
        filters_chars._AWARE_SPECIAL,
        mappers_normalize._HAN,
        mappers_normalize._KANA,
        _text._LETTER_RUN,
        _text._HAN_RUN,
        mappers_sentences._AWARE_SPECIAL,
        mappers_sentences._DJ_SPECIAL,
    ]


def test_count_and_delete_matches_equal_their_definition_on_every_codepoint() -> None:
    from steelforge.clean.ops._text import count_matches, count_matches_reference, delete_matches

    every = "".join(chr(c) for c in range(0x110000))  # surrogates included
    for pattern in _counted_patterns():
        for start in range(0, len(every), 1 << 16):
            chunk = every[start : start + (1 << 16)]
            assert count_matches(pattern, chunk) == count_matches_reference(pattern, chunk), pattern.pattern
            assert delete_matches(pattern, chunk) == pattern.sub("", chunk), pattern.pattern


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("ab_1 \n\t中文あア한。，!?😀\u3000\x00\x85\ue000\ud800")), max_size=60
    )
)
def test_count_and_delete_matches_equal_their_definition(text: str) -> None:
    from steelforge.clean.ops._text import count_matches, count_matches_reference, delete_matches

    for pattern in _counted_patterns():
        assert count_matches(pattern, text) == count_matches_reference(pattern, text)
        assert delete_matches(pattern, text) == pattern.sub("", text)
