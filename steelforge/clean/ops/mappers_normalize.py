"""Character-level normalisation mappers: Unicode repair, punctuation, whitespace, script conversion."""

from __future__ import annotations

import re
import threading
from functools import cache
from typing import Any

from steelforge.clean.ops._dj_tables import DJ_PUNCTUATION_MAP, DJ_WHITESPACE_RANGES
from steelforge.clean.ops._text import (
    HAN_CLASS,
    KANA_CLASS,
    char_table,
    check_semantics,
    code_point_class,
    count_matches,
    is_chinese,
    sparse_translator,
    warm_script_tables,
)
from steelforge.clean.ops.base import Mapper, Semantics, register_op

NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD")

# Full-width ASCII letters and digits (Ａ-Ｚ, ａ-ｚ, ０-９) folded to ASCII; full-width punctuation is left alone.
_fold_fullwidth_alnum = sparse_translator(
    {
        **{0xFF10 + i: chr(ord("0") + i) for i in range(10)},
        **{0xFF21 + i: chr(ord("A") + i) for i in range(26)},
        **{0xFF41 + i: chr(ord("a") + i) for i in range(26)},
    }
)


@register_op("fix_unicode_mapper")
class FixUnicodeMapper(Mapper):
    """Repair mojibake and normalise Unicode with ftfy.

    - `data_juicer`: `ftfy.fix_text(text, normalization=...)` with ftfy's full defaults, which also fold
      full-width characters to ASCII (，：（）；？！～％ become ASCII, U+3000 a space) and straighten curly
      quotes (“” become "); 。 and 、 stay. In code it also drops `\\r` and the BOM.
    - `language_aware`: the same repairs without `fix_character_width` and `uncurl_quotes`, so Chinese
      punctuation and quotes stay as written; full-width Latin letters and digits are still folded.
    """

    def __init__(self, normalization: str | None = None, semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        self.normalization = (normalization or "NFC").upper()
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}"
            )
        self._config: Any = None

    def _fixer_config(self) -> Any:
        if self._config is None:
            import ftfy

            extra = (
                {}
                if self.semantics == "data_juicer"
                else {"fix_character_width": False, "uncurl_quotes": False}
            )
            self._config = ftfy.TextFixerConfig(normalization=self.normalization, explain=False, **extra)
        return self._config

    def map_text(self, text: str) -> str:
        fixed = fix_text_fast(text, self._fixer_config())
        if self.semantics == "data_juicer":
            return fixed
        return _fold_fullwidth_alnum(fixed)


# A line of printable ASCII (tab allowed) passes every ftfy step unchanged, except HTML unescaping of "&".
_PLAIN_ASCII = re.compile(r"[\t\x20-\x7e]*\n?")
_PLAIN_ASCII_TEXT = re.compile(r"[\t\n\x20-\x7e]*")


def fix_text_fast(text: str, config: Any) -> str:
    """`ftfy.fix_text(text, config)`, same output, without ftfy's per-line overhead where it cannot matter.

    ftfy fixes a text line by line, each line through all its steps until nothing changes, and with
    `unescape_html="auto"` stops unescaping once a line contains "<". Every step except the mojibake
    repair is local to a few characters that never span a newline, and the repair only acts on text its
    badness regex flags (`is_bad_fast`). So a text whose whole is never flagged is fixed in one pass over the
    whole text (`_fix_whole`), the lines before the first line holding "<" and the lines from it on apart
    (HTML unescaping on, then off); otherwise lines are fixed one by one as ftfy does, copying lines of
    plain printable ASCII, which no step changes.
    """
    if "&" not in text and _PLAIN_ASCII_TEXT.fullmatch(text):
        return text
    if config.unescape_html == "auto" and "<" in text and len(text) <= config.max_decode_length:
        start = text.rfind("\n", 0, text.index("<")) + 1  # the start of the first line holding "<"
        head = fix_text_fast(text[:start], config) if start else ""
        return head + fix_text_fast(text[start:], config._replace(unescape_html=False))
    whole = _fix_whole(text, config)
    if whole is not None:
        return whole
    return _fix_lines(text, config)


def _fix_lines(text: str, config: Any) -> str:
    """ftfy's own line-by-line loop (`ftfy.fix_text`), copying lines of plain printable ASCII."""
    import ftfy

    out = []
    pos = 0
    limit = config.max_decode_length
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + limit)
        segment = text[pos:end]
        if config.unescape_html == "auto" and "<" in segment:
            config = config._replace(unescape_html=False)
        if _PLAIN_ASCII.fullmatch(segment) and ("&" not in segment or config.unescape_html is False):
            out.append(segment)
        else:
            out.append(ftfy.fix_and_explain(segment, config).text)
        pos = end
    return "".join(out)


_LOCAL_FIXERS = (
    "fix_c1_controls",
    "fix_latin_ligatures",
    "fix_character_width",
    "uncurl_quotes",
    "fix_line_breaks",
    "fix_surrogates",
    "remove_terminal_escapes",
    "remove_control_chars",
)


_SENTINEL = "\U0010fffd"  # a private-use code point none of ftfy's fixers reads or writes


@cache
def _code_point_blocks() -> list[tuple[list[int], str]]:
    """Every code point but surrogates (they pair up, see `_BLOCKERS`), in blocks of 4096 joined by `_SENTINEL`."""
    points = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and chr(cp) != _SENTINEL]
    blocks = [points[i : i + 4096] for i in range(0, len(points), 4096)]
    return [(block, _SENTINEL.join(map(chr, block))) for block in blocks]


@cache
def _single_char_effects(name: str) -> dict[int, str]:
    """What ftfy's public fixer `ftfy.fixes.<name>` makes of each code point alone, for those it changes.

    The code points go through the fixer a block at a time, separated by `_SENTINEL`; only blocks the fixer
    changes are split back (a fixer whose output does not split into one piece per code point is not
    character-local and raises). Replaces reading ftfy's tables (`ftfy.chardata`) directly.
    """
    import ftfy.fixes

    fixer = getattr(ftfy.fixes, name)
    effects: dict[int, str] = {}
    for points, text in _code_point_blocks():
        out = fixer(text)
        if out == text:
            continue
        pieces = out.split(_SENTINEL)
        if len(pieces) != len(points):
            raise RuntimeError(f"ftfy.fixes.{name} is not character-local; cannot tabulate it")
        effects.update((cp, piece) for cp, piece in zip(points, pieces, strict=True) if piece != chr(cp))
    return effects


@cache
def _sparse_translators() -> dict[str, Any]:
    """ftfy's `str.translate` fixers as sparse regex substitutions (same result, faster on CJK text)."""
    names = ("fix_latin_ligatures", "fix_character_width", "remove_control_chars")
    return {name: sparse_translator(_single_char_effects(name)) for name in names}


# Where ftfy's steps stop acting one character at a time: "&" starts an HTML entity, "\r" pairs with a following
# "\n", surrogates pair up, ESC starts a terminal escape sequence.
_BLOCKERS = "&\r\x1b" + "".join(map(chr, range(0xD800, 0xE000)))
_BLOCKER_SET = frozenset(_BLOCKERS)


def _changeable_chars() -> set[int]:
    """Every code point one of ftfy's character-local steps changes when it stands alone."""
    chars: set[int] = set()
    for name in _LOCAL_FIXERS:
        if name not in ("fix_surrogates", "remove_terminal_escapes"):  # act on pairs/sequences: blockers
            chars.update(_single_char_effects(name))
    return chars


@cache
def _fused_steps(names: tuple[str, ...]) -> tuple[re.Pattern[str], Any]:
    """ftfy's steps `names` (in order) as one character map, and the class of characters it does not cover.

    On text without `_BLOCKERS` every step acts on each character alone (a translation table, a single
    character class, or a `str.replace` of one character), so running them in turn equals one map from
    each character to what the steps make of it alone: one sparse substitution instead of eight passes.
    The map is built by running ftfy's real steps on each character they can change; a character whose
    steps produce a blocker joins the blockers.
    """
    import ftfy.fixes

    steps = [getattr(ftfy.fixes, name) for name in names]
    blockers = set(map(ord, _BLOCKERS))
    table: dict[int, str] = {}
    for cp in sorted(_changeable_chars() - blockers):
        out = chr(cp)
        produced: set[str] = set()
        for step in steps:
            out = step(out)
            produced.update(out)
        if not produced.isdisjoint(_BLOCKER_SET):
            blockers.add(cp)
        elif out != chr(cp):
            table[cp] = out
    return re.compile(code_point_class(blockers)), sparse_translator(table)


@cache
def _round_plan(config: Any) -> tuple[list[Any], re.Pattern[str], Any]:
    """For one ftfy config: its steps in order (fast versions where there are), and the fused map's
    blocker class and map (`_fused_steps`). Built once per config, not per document."""
    import ftfy.fixes

    fast = _sparse_translators()
    local = tuple(name for name in _LOCAL_FIXERS if getattr(config, name))
    names = ("unescape_html", *local) if config.unescape_html else local
    return [fast.get(name) or getattr(ftfy.fixes, name) for name in names], *_fused_steps(local)


def _fix_whole(text: str, config: Any) -> str | None:
    """ftfy's steps over the whole text at once, or None when the line-by-line path is needed.

    A round over text without blockers is the fused character map (`_fused_steps`); otherwise ftfy's steps
    run one by one. Rounds repeat until one changes nothing, as in ftfy.
    """
    import unicodedata

    if (config.unescape_html == "auto" and "<" in text) or len(text) > config.max_decode_length:
        return None
    steps, blockers, fused = _round_plan(config)
    while True:
        original = text
        if config.fix_encoding and not text.isascii() and is_bad_fast(text):
            return None
        if blockers.search(text) is None:
            text = fused(text)
        else:
            for step in steps:
                text = step(text)
        if config.normalization is not None:
            text = unicodedata.normalize(config.normalization, text)
        if text == original:
            return text


# ftfy 6.3.1's `BADNESS_RE` (identified by the SHA-256 of its pattern): the characters one of which every match
# contains (for each alternative, its rarest required non-ASCII position) and its longest match. Derived from the
# regex's parse tree and re-checked against the installed ftfy by tests/clean/test_ops_mappers.py; another ftfy
# (another pattern) makes `is_bad_fast` fall back to the plain search.
_BADNESS_SHA256 = "9dcc0f2ac90d9ae3c85eb7b9b2c0b8a8e8126153847c2b30c91a0bb263f3b8c4"
_BADNESS_WIDTH = 7
_BADNESS_ANCHOR_RANGES = (
    (0x0080, 0x009F), (0x00A1, 0x00AC), (0x00AE, 0x00B3), (0x00B5, 0x00B6), (0x00B8, 0x00DD), (0x00DF,
    0x00FC), (0x0100, 0x0107), (0x010C, 0x0113), (0x0116, 0x011B), (0x011E, 0x011F), (0x0122, 0x0123),
    (0x012A, 0x012B), (0x012F, 0x0130), (0x0136, 0x0137), (0x0139, 0x013E), (0x0141, 0x0143), (0x0145,
    0x0145), (0x0147, 0x0147), (0x014C, 0x014C), (0x0150, 0x0150), (0x0152, 0x0153), (0x0155, 0x0155),
    (0x0158, 0x0158), (0x015A, 0x015B), (0x015E, 0x0162), (0x0164, 0x0165), (0x016A, 0x016A), (0x016E,
    0x016E), (0x0170, 0x0170), (0x0172, 0x0172), (0x0178, 0x017E), (0x0192, 0x0192), (0x02C6, 0x02C7),
    (0x02D8, 0x02D8), (0x02DB, 0x02DD), (0x0384, 0x0385), (0x0392, 0x0393), (0x039E, 0x039F), (0x03B2,
    0x03B2), (0x0412, 0x0413), (0x0420, 0x0421), (0x0432, 0x0432), (0x0490, 0x0491), (0x2018, 0x2018),
    (0x201A, 0x201A), (0x201C, 0x201E), (0x2020, 0x2022), (0x2030, 0x2030), (0x2039, 0x203A), (0x2044,
    0x2044), (0x20A7, 0x20A7), (0x20AC, 0x20AC), (0x2116, 0x2116), (0x2122, 0x2122), (0x2202, 0x2202),
    (0x2206, 0x2206), (0x220F, 0x220F), (0x2211, 0x2211), (0x221A, 0x221A), (0x221E, 0x221E), (0x2229,
    0x2229), (0x222B, 0x222B), (0x2248, 0x2248), (0x2260, 0x2261), (0x2264, 0x2265), (0x2310, 0x2310),
    (0x2502, 0x2502), (0x250C, 0x250C), (0x2510, 0x2510), (0x2518, 0x2518), (0x251C, 0x251C), (0x2524,
    0x2524), (0x252C, 0x252C), (0x253C, 0x253C), (0x2550, 0x256C), (0x2580, 0x2580), (0x2584, 0x2584),
    (0x2588, 0x2588), (0x258C, 0x258C), (0x2590, 0x2593), (0x25CA, 0x25CA), (0xF8FF, 0xF8FF), (0xFB01,
    0xFB02), (0xFFFD, 0xFFFD),
)


@cache
def _badness_hints() -> tuple[re.Pattern[str], int] | None:
    """(class of anchor characters, longest match) of ftfy's mojibake regex, or None for an unknown regex.

    Every alternative of `BADNESS_RE` needs at least one character from a small set, and no match is
    longer than a few characters. So a match can only lie within that distance of an anchor character:
    text without anchors is never bad, and elsewhere only short windows around the anchors need the full
    regex.
    """
    import hashlib

    from ftfy.badness import BADNESS_RE

    if hashlib.sha256(BADNESS_RE.pattern.encode("utf-8")).hexdigest() != _BADNESS_SHA256:
        return None
    ranges = "".join(f"\\U{lo:08X}-\\U{hi:08X}" for lo, hi in _BADNESS_ANCHOR_RANGES)
    return re.compile(f"[{ranges}]"), _BADNESS_WIDTH


@cache
def _badness_lines() -> re.Pattern[str]:
    """ftfy's mojibake regex with `^` matching at every line start, as it does on each line ftfy fixes."""
    from ftfy.badness import BADNESS_RE

    return re.compile(BADNESS_RE.pattern, BADNESS_RE.flags | re.MULTILINE)


def is_bad_fast(text: str) -> bool:
    """Whether ftfy's mojibake regex matches `text` with `^` at every line start: true when some line is
    `ftfy.badness.is_bad` (and possibly when a match spans a line break, which only sends the caller
    down ftfy's line-by-line path). Runs the large regex only in windows around anchor characters.

    ftfy judges each line on its own, and one alternative (`^[ÃÂ][ ]`) is anchored at the line start, so
    a plain search of the whole text would miss "Ã " at the start of a second line. The full regex costs
    ~0.3 µs per character on CJK text; most documents hold no anchor at all.
    """
    search = _badness_lines().search
    hints = _badness_hints()
    if hints is None:
        return search(text) is not None
    anchor, width = hints
    start: int | None = None
    end = 0
    for match in anchor.finditer(text):
        pos = match.start()
        if start is not None and pos - width <= end:
            end = pos + width + 1  # overlapping windows are searched as one
            continue
        if start is not None and search(text, start, end):
            return True
        start, end = max(0, pos - width), pos + width + 1
    return start is not None and search(text, start, end) is not None


_ZH_KEEP = frozenset("，。、《》「」：？！（）；～％【】〈〉…—．“”’")


@register_op("punctuation_normalization_mapper")
class PunctuationNormalizationMapper(Mapper):
    """Map Unicode punctuation to ASCII with BigScience's table.

    - `data_juicer`: the table as is, for every document: 《》「」 become `"`, "—" becomes " - ", and the
      full-width digit "１" becomes `"` (a bug of the original table).
    - `language_aware`: Chinese documents (script check, see `is_chinese`) keep their punctuation
      (，。、《》「」：？！（）；～％【】〈〉…—．“”’); only stray Western marks („ ´ ∶ ━ ►) are normalised.
      Other documents get the whole table. In both cases "１" becomes "1".
    """

    def __init__(self, semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        self._dj = sparse_translator(str.maketrans(DJ_PUNCTUATION_MAP))
        fixed = {**DJ_PUNCTUATION_MAP, "\uff11": "1"}
        self._other = sparse_translator(str.maketrans(fixed))
        self._zh = sparse_translator(str.maketrans({k: v for k, v in fixed.items() if k not in _ZH_KEEP}))
        if self.semantics == "language_aware":
            warm_script_tables()

    def map_text(self, text: str) -> str:
        if self.semantics == "data_juicer":
            return self._dj(text)
        return (self._zh if is_chinese(text) else self._other)(text)


_DJ_WHITESPACE_TABLE = {cp: " " for lo, hi in DJ_WHITESPACE_RANGES for cp in range(lo, hi + 1)}
_AWARE_WHITESPACE_TABLE = {
    **{cp: " " for cp in (0x84, 0xA0, 0x202F, 0x205F, 0x3000, *range(0x2000, 0x200B))},
    **{cp: None for cp in (0x200B, 0x2060, 0xFEFF, 0xFFFC)},
}


@register_op("whitespace_normalization_mapper")
class WhitespaceNormalizationMapper(Mapper):
    """Strip both ends and normalise exotic whitespace to a plain space (newlines are kept).

    - `data_juicer`: tab, NBSP, U+2000-U+200D (zero-width space and joiners included), U+202F, U+205F,
      U+2060, U+3000, U+FFFC and U+0084 all become a space.
    - `language_aware`: the visible spaces (NBSP, U+2000-U+200A, U+202F, U+205F, U+3000, U+0084) become a
      space; invisible ones (ZWSP, word joiner, BOM, U+FFFC) are removed instead of turning into spaces
      inside Chinese text; tab (code indentation) and the joiners U+200C/U+200D (emoji sequences,
      Indic and Persian script) are kept. The ends are stripped after the mapping too, so that a mapped
      character at an end (U+0084 is not whitespace to `str.strip`) does not survive as a space: running the
      mapper twice changes nothing. Data-Juicer strips only before mapping, and `data_juicer` keeps that.
    """

    def __init__(self, semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        table = _DJ_WHITESPACE_TABLE if semantics == "data_juicer" else _AWARE_WHITESPACE_TABLE
        self._translate = sparse_translator(table)
        self._strip_after = semantics != "data_juicer"

    def map_text(self, text: str) -> str:
        mapped = self._translate(text.strip())
        return mapped.strip() if self._strip_after else mapped


@register_op("remove_specific_chars_mapper")
class RemoveSpecificCharsMapper(Mapper):
    """Delete every occurrence of the given characters (default: decorative bullets and shapes).

    Language-neutral, so both semantics behave alike: a list of strings contributes all its characters.
    """

    def __init__(
        self, chars_to_remove: str | list[str] = "◆●■►▼▲▴∆▻▷❖♡□", semantics: Semantics = "language_aware"
    ) -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        chars = "".join(chars_to_remove) if chars_to_remove else ""
        self._translate = sparse_translator(dict.fromkeys(map(ord, chars)))

    def map_text(self, text: str) -> str:
        return self._translate(text)


CHINESE_CONVERT_MODES = (
    "s2t", "t2s", "s2tw", "tw2s", "s2hk", "hk2s", "s2twp", "tw2sp", "t2tw", "tw2t", "hk2t", "t2hk", "t2jp", "jp2t",
)  # fmt: skip
_CONVERTERS: dict[str, Any] = {}
_CONVERTERS_LOCK = threading.Lock()
_HAN = re.compile(f"[{HAN_CLASS}]+")
_KANA = re.compile(f"[{KANA_CLASS}]+")
JAPANESE_KANA_SHARE = 0.1


def opencc_converter(mode: str) -> Any:
    """One OpenCC converter per mode and process (building one reads its dictionaries).

    steelforge pins OpenCC 1.1.9, the version Data-Juicer 1.6.1 pins, for both semantics: one OpenCC can
    be installed at a time, and 1.1.9's dictionaries give Data-Juicer's outputs exactly (newer ones add
    phrase entries such as 沈重→沉重 and a wrong 打坏了→打坯了, see docs/clean.md).
    """
    with _CONVERTERS_LOCK:
        if mode not in _CONVERTERS:
            import opencc

            _CONVERTERS[mode] = opencc.OpenCC(f"{mode}.json")
        return _CONVERTERS[mode]


@register_op("chinese_convert_mapper")
class ChineseConvertMapper(Mapper):
    """Convert between Simplified, Traditional (Taiwan, Hong Kong) Chinese and Japanese kanji with OpenCC.

    - `data_juicer`: every document is converted with OpenCC 1.1.9 (the version Data-Juicer pins).
    - `language_aware`: Japanese documents (kana at least 10% of the Han + kana characters) are left
      alone unless the mode is a Japanese one (`t2jp`, `jp2t`), since Chinese conversion would rewrite
      their kanji; documents without Han characters are returned without calling OpenCC.
    """

    def __init__(self, mode: str = "s2t", semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        if mode not in CHINESE_CONVERT_MODES:
            raise ValueError(f"mode must be one of {', '.join(CHINESE_CONVERT_MODES)}, not {mode!r}")
        self.mode = mode
        opencc_converter(mode)
        if semantics == "language_aware":
            char_table(_HAN)
            char_table(_KANA)

    def map_text(self, text: str) -> str:
        if self.semantics == "language_aware":
            han = count_matches(_HAN, text)
            if not han:
                return text
            kana = count_matches(_KANA, text)
            if "jp" not in self.mode and kana >= JAPANESE_KANA_SHARE * (han + kana):
                return text
        return opencc_converter(self.mode).convert(text)
