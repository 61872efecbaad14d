"""Mappers in both semantics: each Data-Juicer behaviour of DATA_JUICER_NOTES.md and its correction."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import ftfy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.clean.ops import Mapper, build_op
from steelforge.clean.ops._text import sparse_translator
from steelforge.clean.ops.mappers_normalize import _badness_hints, fix_text_fast, is_bad_fast
from steelforge.errors import RecipeError

MAPPERS = [
    "chinese_convert_mapper",
    "clean_email_mapper",
    "clean_html_mapper",
    "clean_ip_mapper",
    "clean_links_mapper",
    "clean_copyright_mapper",
    "expand_macro_mapper",
    "fix_unicode_mapper",
    "punctuation_normalization_mapper",
    "remove_repeat_sentences_mapper",
    "remove_specific_chars_mapper",
    "whitespace_normalization_mapper",
]


def dj(name: str, **params: object) -> Mapper:
    op = build_op({name: params}, semantics="data_juicer")
    assert isinstance(op, Mapper)
    return op


def la(name: str, **params: object) -> Mapper:
    op = build_op({name: params}, semantics="language_aware")
    assert isinstance(op, Mapper)
    return op


def test_fix_unicode_data_juicer_folds_cjk_punctuation_and_quotes() -> None:
    out = dj("fix_unicode_mapper").map_text("你好，世界：（测试）；真的？是！～５０％\u3000“引号”。、")
    assert out == '你好,世界:(测试);真的?是!~50% "引号"。、'


def test_fix_unicode_data_juicer_drops_cr_and_bom_in_code() -> None:
    assert dj("fix_unicode_mapper").map_text("\ufeffint x;\r\nint y;\r\n") == "int x;\nint y;\n"


def test_fix_unicode_language_aware_keeps_chinese_punctuation() -> None:
    op = la("fix_unicode_mapper")
    assert op.map_text("你好，世界！“引号”？\u3000ＡＢＣ１２３") == "你好，世界！“引号”？\u3000ABC123"
    assert op.map_text("sÃ³ voilÃ  le travail") == "só voilà le travail"  # mojibake is still repaired


def test_fix_unicode_rejects_unknown_normalization() -> None:
    with pytest.raises(RecipeError, match="normalization"):
        build_op({"fix_unicode_mapper": {"normalization": "NFX"}}, semantics="language_aware")


def _some_changeable_chars() -> list[str]:
    """A fixed sample of the characters ftfy's local steps change (full-width forms, ligatures, controls...)."""
    import random

    from steelforge.clean.ops.mappers_normalize import _changeable_chars

    return [chr(c) for c in random.Random(0).sample(sorted(_changeable_chars()), 60)]


def test_fused_steps_cover_every_character_ftfy_changes() -> None:
    """Every code point outside `_changeable_chars` and the blockers passes each local ftfy step unchanged,
    so the fused map misses nothing (checked over all of Unicode, one character per line)."""
    from steelforge.clean.ops.mappers_normalize import _BLOCKERS, _LOCAL_FIXERS, _changeable_chars

    skip = _changeable_chars() | set(map(ord, _BLOCKERS)) | {ord("\n")}
    text = "\n".join(chr(cp) for cp in range(0x110000) if cp not in skip)
    for name in _LOCAL_FIXERS:
        assert ftfy.FIXERS[name](text) == text, name


@settings(max_examples=150, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            list("ab <&;amp\n\r\t\u00c3\u00a9\uff0c\u201c\u3000\x1b\x85é中ﬁ\x00\ufeff１œ\u2028\ud800\uff06[m3")
            + _some_changeable_chars()
        )
    ),
    st.booleans(),
)
def test_fast_ftfy_equals_ftfy(text: str, aware: bool) -> None:
    extra = {"fix_character_width": False, "uncurl_quotes": False} if aware else {}
    config = ftfy.TextFixerConfig(normalization="NFC", **extra)
    assert fix_text_fast(text, config) == ftfy.fix_text(text, config=config)


@cache
def _mojibake_alphabet() -> list[str]:
    """Every character ftfy's badness regex mentions, plus ASCII, CJK and whitespace around them."""
    from ftfy.badness import BADNESS_RE

    return sorted(set(BADNESS_RE.pattern) - set("[]{}|\\#") | set("abcAZ .,?!\n\t中文，。“”"))


def _derived_badness_hints() -> tuple[set[str], int]:
    """Anchor characters and longest match of ftfy's `BADNESS_RE`, derived from its parse tree (CPython's
    private `re._parser`, used here only to check the constants vendored in `mappers_normalize`)."""
    from re import _constants as sre
    from re import _parser

    from ftfy.badness import BADNESS_RE

    def required(item: tuple) -> set[str] | None:
        op, arg = item
        if op == sre.LITERAL:
            return {chr(arg)}
        if op != sre.IN:
            return None
        chars: set[str] = set()
        for kind, value in arg:
            if kind == sre.LITERAL:
                chars.add(chr(value))
            elif kind == sre.RANGE:
                chars.update(map(chr, range(value[0], value[1] + 1)))
            else:
                return None
        return chars

    parsed = _parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    assert len(parsed.data) == 1 and parsed.data[0][0] == sre.BRANCH
    allowed = {sre.ANY, sre.BRANCH, sre.MAX_REPEAT, sre.IN, sre.LITERAL, sre.AT, sre.CATEGORY}
    anchors: set[str] = set()
    for branch in parsed.data[0][1][1]:
        candidates = []
        for item in branch.data:
            assert item[0] in allowed and (item[0] != sre.AT or item[1] == sre.AT_BEGINNING)
            chars = required(item)
            if chars and all(ord(c) > 0x7F for c in chars):
                candidates.append(chars)
        assert candidates
        anchors |= min(candidates, key=len)
    return anchors, parsed.getwidth()[1]


def test_badness_hints_apply_to_installed_ftfy() -> None:
    hints = _badness_hints()
    assert hints is not None  # otherwise is_bad_fast silently falls back to the slow search
    anchor, width = hints
    anchors, derived_width = _derived_badness_hints()
    assert width == derived_width
    every = "".join(map(chr, range(0x80, 0x10000)))
    assert set(anchor.findall(every)) == anchors


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_is_bad_fast_equals_ftfy(data: st.DataObject) -> None:
    from ftfy.badness import is_bad

    text = data.draw(st.text(alphabet=st.sampled_from(_mojibake_alphabet()), max_size=40))
    lines = [line for line in re.findall(r"[^\n]*\n?", text) if line] or [""]  # ftfy's lines
    if len(lines) == 1:
        assert is_bad_fast(text) == is_bad(text)
    elif any(is_bad(line) for line in lines):
        assert is_bad_fast(text)  # a bad line is never missed; a match across lines may add a false alarm


def test_is_bad_fast_sees_line_starts() -> None:
    # ftfy flags "Ã " at the start of a line (`^[ÃÂ][ ]`), also on a text's second line
    assert is_bad_fast("\nÃ ") and is_bad_fast("x\nÃ  y")
    config = ftfy.TextFixerConfig(normalization="NFC")
    assert fix_text_fast("\nÃ ", config) == ftfy.fix_text("\nÃ ", config=config) == "\nà "


def test_punctuation_data_juicer_table_quirks() -> None:
    op = dj("punctuation_normalization_mapper")
    assert op.map_text("《红楼梦》「你好」—１，。") == '"红楼梦""你好" - ",.'


def test_punctuation_language_aware_keeps_chinese_and_fixes_the_digit() -> None:
    op = la("punctuation_normalization_mapper")
    assert op.map_text("《红楼梦》「你好」——第１回，完。") == "《红楼梦》「你好」——第1回，完。"
    assert op.map_text("Hello，world！ Page １„quoted“") == 'Hello,world! Page 1"quoted"'


def test_whitespace_data_juicer_maps_tab_and_zero_width_to_space() -> None:
    op = dj("whitespace_normalization_mapper")
    assert op.map_text("  a\tb\u00a0c\u200bd\u200de\u3000f\ng  ") == "a b c d e f\ng"


def test_whitespace_language_aware_keeps_tab_and_joiners() -> None:
    op = la("whitespace_normalization_mapper")
    assert op.map_text("  def f():\n\treturn 1\u200b\u00a0👨\u200d💻  ") == "def f():\n\treturn 1 👨\u200d💻"
    assert op.map_text("中\u200b文") == "中文"


def test_copyright_block_with_copyright_is_removed_in_both() -> None:
    text = "/* Copyright 2020 ACME */\nint x;\n"
    for op in (dj("clean_copyright_mapper"), la("clean_copyright_mapper")):
        assert op.map_text(text) == "\nint x;\n"


def test_copyright_block_without_copyright_stops_data_juicer() -> None:
    text = "# comment\n/* plain block */\nint x;"
    assert dj("clean_copyright_mapper").map_text(text) == text


def test_copyright_data_juicer_deletes_markdown_titles_and_includes() -> None:
    op = dj("clean_copyright_mapper")
    assert op.map_text("# 标题\n\n正文") == "正文"
    assert op.map_text("#include <stdio.h>\n#pragma once\nint main() {}") == "int main() {}"
    assert op.map_text("-- SQL\nselect 1;") == "select 1;"


def test_copyright_language_aware_only_removes_licence_headers() -> None:
    op = la("clean_copyright_mapper")
    assert op.map_text("# 标题\n\n正文") == "# 标题\n\n正文"
    assert op.map_text("#include <stdio.h>\nint main() {}") == "#include <stdio.h>\nint main() {}"
    assert op.map_text("#!/usr/bin/env python\n# Copyright 2020 ACME\n# MIT License\n\nimport os") == (
        "#!/usr/bin/env python\nimport os"
    )
    assert op.map_text("// SPDX-License-Identifier: MIT\n#include <a.h>\n") == "#include <a.h>\n"


def test_html_data_juicer_deletes_tag_like_text() -> None:
    out = dj("clean_html_mapper").map_text("#include <sys/ipc.h>\n<p>A &amp; B</p><END>")
    assert out == "#include \nA & B"


def test_html_language_aware_keeps_tag_like_text() -> None:
    op = la("clean_html_mapper")
    assert op.map_text("#include <sys/ipc.h>\nif (a < b > c) x = List<String>();\r\n") == (
        "#include <sys/ipc.h>\nif (a < b > c) x = List<String>();\r\n"
    )
    html = (
        '<div class="x">标题</div><ul><li>一</li><li>二</li></ul><p>A &amp; B&nbsp;C</p><script>x()</script>'
    )
    assert op.map_text(html) == "标题\n\n*一\n*二\nA & B\u00a0C\n"


def test_links_data_juicer_removes_word_colon_word() -> None:
    op = dj("clean_links_mapper")
    assert op.map_text("css background:transparent ok") == "css  ok"
    assert op.map_text("见 https://a.com/x了解更多 end") == "见  end"


def test_links_language_aware_needs_a_real_link() -> None:
    op = la("clean_links_mapper")
    assert (
        op.map_text("css background:transparent; RAID:Non-RAID ok")
        == "css background:transparent; RAID:Non-RAID ok"
    )
    assert op.map_text("见https://a.com/x?q=1了解更多。see www.b.org.") == "见了解更多。see ."


def test_email_semantics() -> None:
    assert (
        dj("clean_email_mapper").map_text("联系 Bob@Example.COM 或 a@b.cn。") == "联系 Bob@Example.COM 或 。"
    )
    assert la("clean_email_mapper").map_text("联系 Bob@Example.COM 或 a@b.cn。") == "联系  或 。"
    assert la("clean_email_mapper", repl="<EMAIL>").map_text("x a@b.io") == "x <EMAIL>"


def test_ip_semantics() -> None:
    text = "host 192.168.0.1. version 1.2.3.4.5"
    assert dj("clean_ip_mapper").map_text(text) == "host . version .5"
    assert la("clean_ip_mapper").map_text(text) == "host . version 1.2.3.4.5"
    v6 = "addr 2001:0db8:85a3:0000:0000:8a2e:0370:7334 end"
    assert la("clean_ip_mapper").map_text(v6) == dj("clean_ip_mapper").map_text(v6) == "addr  end"


def test_custom_pattern_with_r_quotes() -> None:
    assert dj("clean_email_mapper", pattern="r'\\d+'", repl="#").map_text("a1b22") == "a#b#"
    with pytest.raises(RecipeError, match="valid regular expression"):
        build_op({"clean_links_mapper": {"pattern": "("}}, semantics="data_juicer")


def test_expand_macro_semantics() -> None:
    text = "\\newcommand{\\R}{\\mathbb{R}}\n$x \\in \\R$, \\R"
    assert (
        dj("expand_macro_mapper").map_text(text)
        == "\\newcommand{\\mathbb{R}}{\\mathbb{R}}\n$x \\in \\mathbb{R}$, \\R"
    )
    assert (
        la("expand_macro_mapper").map_text(text)
        == "\\newcommand{\\R}{\\mathbb{R}}\n$x \\in \\mathbb{R}$, \\mathbb{R}"
    )
    assert la("expand_macro_mapper").map_text("\\def\\zh{中文}\n\\zh 文本") == "\\def\\zh{中文}\n中文 文本"


def test_remove_repeat_sentences_semantics() -> None:
    text = "今天很好。今天很好。走吧！\nPi is 3.14. Pi is 3.14. return x\nreturn x"
    assert dj("remove_repeat_sentences_mapper").map_text(text) == "今天很好。走吧！\nPi is 3.14. return x\n"
    assert (
        la("remove_repeat_sentences_mapper").map_text(text)
        == "今天很好。走吧！\nPi is 3.14. return x\nreturn x"
    )


def test_remove_repeat_sentences_language_aware_compares_all_han() -> None:
    # U+9FA6.. are outside Data-Juicer's \u4e00-\u9fa5 key range, so it sees both sentences as "" and keeps them.
    text = "\u9fa6\u9fa7。\u9fa6\u9fa7。"
    assert dj("remove_repeat_sentences_mapper").map_text(text) == text
    assert la("remove_repeat_sentences_mapper").map_text(text) == "\u9fa6\u9fa7。"


def test_remove_specific_chars() -> None:
    for op in (dj("remove_specific_chars_mapper"), la("remove_specific_chars_mapper")):
        assert op.map_text("◆重点●内容■|") == "重点内容|"
    assert la("remove_specific_chars_mapper", chars_to_remove=["ab", "c"]).map_text("abcd") == "d"
    assert la("remove_specific_chars_mapper", chars_to_remove="").map_text("◆") == "◆"


def test_chinese_convert() -> None:
    assert dj("chinese_convert_mapper", mode="t2s").map_text("漢語劄子") == "汉语劄子"  # OpenCC 1.1.9's table
    assert la("chinese_convert_mapper", mode="t2s").map_text("漢語") == "汉语"
    # OpenCC 1.1.9 (pinned, as Data-Juicer pins it): phrase entries added later (沈重→沉重, 英哩→英里) and the
    # newer dictionary's wrong 打坏了→打坯了 do not apply.
    assert dj("chinese_convert_mapper", mode="t2s").map_text("沈重 英哩 打壞了 搧風") == "沈重 英哩 打坏了 搧风"
    japanese = "東京の天気は晴れです。"
    assert dj("chinese_convert_mapper", mode="t2s").map_text(japanese) != japanese
    assert la("chinese_convert_mapper", mode="t2s").map_text(japanese) == japanese
    with pytest.raises(RecipeError, match="mode"):
        build_op({"chinese_convert_mapper": {"mode": "x2y"}}, semantics="data_juicer")


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
@settings(max_examples=25, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab 1.。，<>/&;:#*\n\t中文字◆@\u200b\u3000")), max_size=60))
def test_every_mapper_returns_text(semantics: str, text: str) -> None:
    for op in _all_mappers(semantics):
        assert isinstance(op.map_text(text), str)


@cache
def _all_mappers(semantics: str) -> list[Mapper]:
    return [build_op(name, semantics=semantics) for name in MAPPERS]  # type: ignore[arg-type,misc]


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=80))
def test_whitespace_normalization_is_idempotent(text: str) -> None:
    op = la("whitespace_normalization_mapper")
    once = op.map_text(text)
    assert op.map_text(once) == once


def test_data_juicer_whitespace_strips_before_mapping_only() -> None:
    """Data-Juicer strips, then maps: U+0084 (not whitespace to str.strip) at an end survives as a space."""
    assert dj("whitespace_normalization_mapper").map_text("a\x84") == "a "
    assert la("whitespace_normalization_mapper").map_text("a\x84") == "a"


def test_semantics_must_be_known() -> None:
    from steelforge.clean.ops.mappers_normalize import WhitespaceNormalizationMapper

    with pytest.raises(ValueError, match="semantics"):
        WhitespaceNormalizationMapper(semantics="spacy")  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("a A\t\u3000\u200b，—１x中"))))
def test_sparse_translator_equals_str_translate(text: str) -> None:
    tables = [
        {0x20: " ", 0x9: " ", 0x3000: " ", 0x200B: None},
        str.maketrans({"，": ",", "—": " - "}),
        {65: 97},
    ]
    for table in tables:
        assert sparse_translator(table)(text) == text.translate(table)


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
def test_operators_pickle_for_worker_processes(semantics: str) -> None:
    import pickle

    from steelforge.clean.ops.filters_chars import AlphanumericFilter

    text = "  《测试》，１２ <p>x&amp;y</p> http://a.b/c\t"
    for op in [*_all_mappers(semantics), AlphanumericFilter(semantics=semantics)]:  # type: ignore[arg-type]
        clone = pickle.loads(pickle.dumps(op))
        if isinstance(op, Mapper):
            assert clone.map_text(text) == op.map_text(text)
        else:
            assert clone.compute_stats(text) == op.compute_stats(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab 中文.。！!？?…’”\"'」）{}62 \t")), max_size=40))
def test_sentence_split_precheck_changes_nothing(line: str) -> None:
    from steelforge.clean.ops.mappers_sentences import _AWARE_BOUNDARY, _DJ_SPLITS, dj_split_sentences

    plain = line
    for pattern, repl in _DJ_SPLITS:
        plain = pattern.sub(repl, plain)
    assert dj_split_sentences(line) == plain.split("\n")
    assert _AWARE_BOUNDARY.split(line) == [line] or any(c in line for c in "。！？.!?")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([*"htpsHTw W.:/a-z中文 (x)1%", "www.", "http://", "a.cn/"]), max_size=20).map(
        "".join
    ),
    st.sampled_from(["data_juicer", "language_aware"]),
)
def test_links_precheck_changes_nothing(text: str, semantics: str) -> None:
    op = build_op("clean_links_mapper", semantics=semantics)
    assert op.map_text(text) == op.regex.sub("", text)


_SENTENCE_CHARS = list("ab AΣσ中文.。！!？?…’”\"'」』）)]{}62 \t\n\x1c\x85\u3000\u00a0_-#\x00")


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(_SENTENCE_CHARS), max_size=80),
    semantics=st.sampled_from(["data_juicer", "language_aware"]),
    lowercase=st.booleans(),
    ignore_special_character=st.booleans(),
    min_repeat_sentence_length=st.integers(0, 3),
)
def test_remove_repeat_sentences_whole_document_equals_line_by_line(
    text: str,
    semantics: str,
    lowercase: bool,
    ignore_special_character: bool,
    min_repeat_sentence_length: int,
) -> None:
    params = {
        "lowercase": lowercase,
        "ignore_special_character": ignore_special_character,
        "min_repeat_sentence_length": min_repeat_sentence_length,
    }
    op = build_op({"remove_repeat_sentences_mapper": params}, semantics=semantics)
    doubled = text + "\n" + text  # every sentence repeats: the removal path, not only the early return
    assert op.map_text(text) == op.map_lines(text)
    assert op.map_text(doubled) == op.map_lines(doubled)


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
def test_remove_repeat_sentences_whole_document_equals_line_by_line_on_steel_samples(
    steel_samples_dir: Path, semantics: str
) -> None:
    from steelforge.clean.io import iter_records

    op = (
        dj("remove_repeat_sentences_mapper")
        if semantics == "data_juicer"
        else la("remove_repeat_sentences_mapper")
    )
    texts = [r["text"] for r in iter_records(steel_samples_dir / "2021-31_zh_head_0000_sample.jsonl")]
    changed = 0
    for text in texts:
        out = op.map_text(text)
        assert out == op.map_lines(text)  # type: ignore[attr-defined]
        changed += out != text
    assert changed  # the samples do repeat sentences


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"0129.:@aAfFgx中 -_+%", "255.", "10.0.0.", "fe80:", "::", "a@b.cn", "١"]),
        max_size=24,
    ).map("".join),
    st.sampled_from(["data_juicer", "language_aware"]),
    st.sampled_from(["clean_ip_mapper", "clean_email_mapper"]),
)
def test_pattern_screens_change_nothing(text: str, semantics: str, name: str) -> None:
    op = build_op(name, semantics=semantics)
    assert op.map_text(text) == op.regex.sub("", text)


_LINK_TOKENS = [*"htpw:/.a-z(x)中 <>`!,;'\"1%Kſ", "http://", "www.", "a.cn/", "(a)", "((b))"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_LINK_TOKENS), max_size=12).map(lambda tokens: "".join(tokens)[:26]))
def test_data_juicer_link_pattern_matches_like_the_original(text: str) -> None:
    """Short texts only: the original pattern backtracks exponentially on longer ones."""
    import re

    from steelforge.clean.ops.mappers_patterns import _DJ_LINK, _DJ_LINK_ORIGINAL

    fast, original = re.compile(_DJ_LINK, re.DOTALL), re.compile(_DJ_LINK_ORIGINAL, re.DOTALL)
    assert [(m.span(), m[1]) for m in fast.finditer(text)] == [
        (m.span(), m[1]) for m in original.finditer(text)
    ]


def test_data_juicer_link_pattern_is_fast_where_the_original_backtracks() -> None:
    import time

    text = "wh:http://w(中xhttp://./http://a.cn/a.cn/xW :z" * 20  # the original needs minutes for one copy
    start = time.perf_counter()
    dj("clean_links_mapper").map_text(text)
    assert time.perf_counter() - start < 1.0
