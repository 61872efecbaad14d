"""Remove sentences that already appeared earlier in the document."""

from __future__ import annotations

import re

import regex

from steelforge.clean.ops._text import char_table, check_semantics, delete_matches
from steelforge.clean.ops.base import Mapper, Semantics, register_op

# Data-Juicer's splitter: a break after . 。 ! ！ ？ ? "......" or "……" unless a closing quote follows,
# and after such a mark plus a closing quote. Its last character class also holds "{", "6", "}" and "2"
# (a regex written as if quantifiers worked inside brackets), so `6”` or `2’` end a sentence too.
_DJ_SPLITS = (
    (re.compile(r"([.。！!？\?])([^’”])"), r"\1\n\2"),
    (re.compile(r"(\.{6})([^’”])"), r"\1\n\2"),
    (re.compile(r"(…{2})([^’”])"), r"\1\n\2"),
    (re.compile(r"([.。!！？?{}62…][’”])([^’”])"), r"\1\n\2"),
)
_DJ_SPECIAL = re.compile(r"[^a-zA-Z0-9\u4e00-\u9fa5\n\t ]")

# Language-aware boundaries: after CJK terminators always, after . ! ? only before whitespace (so 3.14,
# e.g. or a.b() do not end sentences); closing quotes and brackets stay with their sentence.
_AWARE_BOUNDARY = re.compile(
    r"(?<=[。！？])(?![。！？”’」』）】》])"
    r"|(?<=[。！？][”’」』）】》])"
    r"|(?<=[.!?])(?=\s)"
    r"|(?<=[.!?][\"'”’)\]])(?=\s)"
)
_AWARE_TERMINATED = re.compile(r"(?:[。！？.!?]|…{2})[\"'”’」』）)\]】》]*\s*$")
_AWARE_SPECIAL = re.compile(r"[^\w\s]|_")


# Every splitter above needs one of these characters (the fourth one a closing quote), so a line
# without any of them is a single sentence; most list items, headings and table rows skip four `sub`s.
_DJ_MAY_SPLIT = re.compile(r"[.。！!？?…’”]")
# every boundary sits right after one of these (or a quote after one)
_AWARE_MAY_SPLIT = re.compile(r"[。！？.!?]")

# Whole-document splitting: a sentence boundary is marked by `_MARK` (a character documents almost never
# hold; one that does takes the line-by-line path), with the `regex` engine, whose `\K` inserts the mark
# after a consumed terminator (its lookbehind-free patterns are several times faster, and it expands
# `\1`-style templates in C). `_DJ_MARKS` are Data-Juicer's splitters inserting the mark where they
# insert "\n" (its four classes treat both alike). `_AWARE_BREAK` marks every `_AWARE_BOUNDARY` position:
# its lookbehinds become consumed characters before `\K`, and `\s` is spelled out as the stdlib's
# whitespace (`regex`'s `\s` leaves out U+001C..U+001F).
_MARK = "\x00"
# Each splitter with a substring (or characters) that every one of its matches holds: a text without it is
# left alone without running the splitter (same output; most documents skip three of the four).
_DJ_SCREENS: tuple[tuple[str, ...], ...] = (("",), ("......",), ("……",), ("’", "”"))
_DJ_MARKS = tuple(
    (regex.compile(pattern.pattern), repl.replace(r"\n", _MARK), screen)
    for (pattern, repl), screen in zip(_DJ_SPLITS, _DJ_SCREENS, strict=True)
)
_SPACE = "".join(f"\\U{ord(c):08X}" for c in re.findall(r"\s", "".join(map(chr, range(0x110000)))))
_AWARE_BREAK = regex.compile(
    rf"[。！？]\K(?![。！？”’」』）】》])"
    rf"|[。！？][”’」』）】》]\K"
    rf"|[.!?]\K(?=[{_SPACE}])"
    rf"|[.!?][\"'”’)\]]\K(?=[{_SPACE}])"
)


def dj_split_sentences(line: str) -> list[str]:
    if not _DJ_MAY_SPLIT.search(line):
        return [line]
    for pattern, repl in _DJ_SPLITS:
        line = pattern.sub(repl, line)
    return line.split("\n")


@register_op("remove_repeat_sentences_mapper")
class RemoveRepeatSentencesMapper(Mapper):
    """Drop every sentence whose normalised form already occurred earlier in the document.

    Lines are kept (a line whose sentences all repeat becomes empty); sentences shorter than
    `min_repeat_sentence_length` after normalisation are never removed.
    - `data_juicer`: Data-Juicer's regex splitter (breaks after any "." even in `3.14` or code) and, with
      `ignore_special_character`, a comparison key that keeps only ASCII letters, digits, U+4E00-U+9FA5
      and spaces (other Han characters and every other script are ignored).
    - `language_aware`: "." "!" "?" end a sentence only before whitespace, CJK terminators always; the key
      keeps letters and digits of every script; and only sentences that end in a terminator can be
      removed, so repeated headings, list items and code lines are kept.
    """

    def __init__(
        self,
        lowercase: bool = False,
        ignore_special_character: bool = True,
        min_repeat_sentence_length: int = 2,
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        self.lowercase = lowercase
        self.min_repeat_sentence_length = min_repeat_sentence_length
        special = _DJ_SPECIAL if semantics == "data_juicer" else _AWARE_SPECIAL
        self._special = special if ignore_special_character else None
        if self._special is not None:
            char_table(self._special)

    def _key(self, sentence: str) -> str:
        key = sentence.strip()
        if self.lowercase:
            key = key.lower()
        if self._special is not None:
            key = self._special.sub("", key)
        return key

    def map_text(self, text: str) -> str:
        """The whole document at once: split into sentences with one regex pass, compute every key in
        one pass, and return the text untouched when no two keys that could be removed are equal (most
        documents). Otherwise drop the repeats in one loop over the sentences. Same output as
        `map_lines`, the line-by-line definition."""
        if _MARK in text or self.min_repeat_sentence_length < 1:
            # (a length bound below 1 makes empty sentences removable, which empty lines are not)
            return self.map_lines(text)
        dj = self.semantics == "data_juicer"
        if dj:
            marked = text
            for pattern, repl, screen in _DJ_MARKS:
                if any(piece in marked for piece in screen):
                    marked = pattern.sub(repl, marked)
        else:
            marked = _AWARE_BREAK.sub(_MARK, text)
        # Every line break becomes a piece of its own, so the pieces are the sentences of every line (plus
        # empty pieces where a boundary falls at a line end) with "\n" pieces between lines.
        pieces = marked.replace("\n", f"{_MARK}\n{_MARK}").split(_MARK)
        keys = self._keys(pieces)
        least = self.min_repeat_sentence_length
        candidates = [key for key in keys if len(key) >= least]
        if len(set(candidates)) == len(candidates):
            return text
        seen: set[str] = set()
        kept = []
        for piece, key in zip(pieces, keys, strict=True):
            if len(key) < least or (not dj and not _AWARE_TERMINATED.search(piece)):
                kept.append(piece)
            elif key not in seen:
                kept.append(piece)
                seen.add(key)
        return "".join(kept)

    def _keys(self, pieces: list[str]) -> list[str]:
        """`_key` of every piece in one pass over the joined pieces. A key never holds "\n" (no piece
        does once stripped, and no step adds one); lowercasing the joined text equals lowercasing each
        piece because "\n" is neither cased nor case-ignorable."""
        joined = "\n".join([piece.strip() for piece in pieces])
        if self.lowercase:
            joined = joined.lower()
        if self._special is not None:
            joined = delete_matches(self._special, joined)
        return joined.split("\n")

    def map_lines(self, text: str) -> str:
        """The definition, line by line and sentence by sentence."""
        dj = self.semantics == "data_juicer"
        seen: set[str] = set()
        out_lines = []
        for line in text.split("\n"):
            if not line:
                out_lines.append(line)
                continue
            kept = []
            if dj:
                sentences = dj_split_sentences(line)
            else:
                sentences = _AWARE_BOUNDARY.split(line) if _AWARE_MAY_SPLIT.search(line) else [line]
            for sentence in sentences:
                key = self._key(sentence)
                if len(key) < self.min_repeat_sentence_length or (
                    not dj and not _AWARE_TERMINATED.search(sentence)
                ):
                    kept.append(sentence)
                elif key not in seen:
                    kept.append(sentence)
                    seen.add(key)
            out_lines.append("".join(kept))
        return "\n".join(out_lines)
