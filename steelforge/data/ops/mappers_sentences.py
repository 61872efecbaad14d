"""Remove sentences that already appeared earlier in the document."""

from __future__ import annotations

import re

from steelforge.data.ops._text import check_semantics
from steelforge.data.ops.base import Mapper, Semantics, register_op

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
_AWARE_MAY_SPLIT = re.compile(r"[。！？.!?]")  # every boundary sits right after one of these (or a quote after one)


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

    def _key(self, sentence: str) -> str:
        key = sentence.strip()
        if self.lowercase:
            key = key.lower()
        if self._special is not None:
            key = self._special.sub("", key)
        return key

    def map_text(self, text: str) -> str:
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
