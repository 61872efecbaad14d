"""Length filters: whole text, average line, longest line (characters, or English-equivalent characters)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from steelforge.clean.ops._bounded import BoundedFilter
from steelforge.clean.ops._text import english_equivalent_length
from steelforge.clean.ops.base import Semantics, register_op

_NEWLINE = re.compile(r"\r\n|\r|\n")


LINE_UNITS = ("characters", "english_chars")


def _line_measure(unit: str, semantics: str) -> Callable[[str], float]:
    """How `language_aware` measures one line: code points, or English-equivalent characters."""
    if unit not in LINE_UNITS:
        raise ValueError(f"unit must be one of {', '.join(LINE_UNITS)}, not {unit!r}")
    # `data_juicer` counts characters whatever `unit` says (Data-Juicer has no such parameter), so one recipe
    # runs in both semantics and `steelforge data compare` shows what the unit changes.
    return english_equivalent_length if unit == "english_chars" and semantics == "language_aware" else len


def _lines_aware(text: str) -> list[str]:
    """Lines split on `\\n`, `\\r\\n` or `\\r` only (not on form feeds, U+2028 etc.), without a trailing empty line."""
    lines = _NEWLINE.split(text)
    if lines and not lines[-1]:
        lines.pop()
    return lines


@register_op("text_length_filter")
class TextLengthFilter(BoundedFilter):
    """Keep documents whose length in characters (code points) lies in [min_len, max_len].

    Both semantics measure `len(text)`: a code point is the only length that is the same for every
    script, and Data-Juicer's default `min_len: 10` applies in both (it is a parameter, not a bug).
    """

    stat_key = "text_len"

    def __init__(
        self, min_len: int = 10, max_len: int = sys.maxsize, semantics: Semantics = "language_aware"
    ) -> None:
        super().__init__(min_len, max_len, semantics)

    def measure_dj(self, text: str) -> float:
        return len(text)

    measure_aware = measure_dj


@register_op("average_line_length_filter")
class AverageLineLengthFilter(BoundedFilter):
    """Keep documents whose average line length lies in [min_len, max_len].

    `data_juicer`: `len(text) / len(text.splitlines())`, so newline characters count towards the lines and
    `splitlines` also breaks at form feeds, U+2028 and friends. `language_aware`: the length of the lines
    themselves (newlines not counted) divided by the number of `\\n`/`\\r\\n` lines, in `unit`:
    `characters` (code points) or `english_chars` (`english_equivalent_length`, see docs/clean.md).
    """

    stat_key = "avg_line_length"

    def __init__(
        self,
        min_len: int = 10,
        max_len: int = sys.maxsize,
        unit: str = "characters",
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(min_len, max_len, semantics)
        self._measure = _line_measure(unit, semantics)

    def measure_dj(self, text: str) -> float:
        n = len(text.splitlines())
        return len(text) / n if n else 0.0

    def measure_aware(self, text: str) -> float:
        lines = _lines_aware(text)
        return sum(map(self._measure, lines)) / len(lines) if lines else 0.0


@register_op("maximum_line_length_filter")
class MaximumLineLengthFilter(BoundedFilter):
    """Keep documents whose longest line has between min_len and max_len characters.

    Data-Juicer's default `min_len: 10` also drops documents made only of short lines even when a recipe
    sets just `max_len`; it is a default of the parameter and applies in both semantics. `language_aware`
    splits lines on `\\n`/`\\r\\n` only and measures them in `unit` (as `average_line_length_filter`).
    """

    stat_key = "max_line_length"

    def __init__(
        self,
        min_len: int = 10,
        max_len: int = sys.maxsize,
        unit: str = "characters",
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(min_len, max_len, semantics)
        self._measure = _line_measure(unit, semantics)

    def measure_dj(self, text: str) -> float:
        return max(map(len, text.splitlines()), default=0)

    def measure_aware(self, text: str) -> float:
        return max(map(self._measure, _lines_aware(text)), default=0)
