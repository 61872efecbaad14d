"""Mappers that delete (or replace) what a regular expression finds: e-mail addresses, IPs, links."""

from __future__ import annotations

import re

from steelforge.clean.ops._text import check_semantics, strip_r_quotes
from steelforge.clean.ops.base import Mapper, Semantics, register_op


class _PatternMapper(Mapper):
    """Replace every match of one pattern by `repl`; a user `pattern` wins over both built-in ones.

    `dj_screen`/`aware_screen`: a small pattern found in every match of the built-in pattern, searched
    first so that text without it (most documents) skips the large pattern (same output).
    """

    dj_pattern: str = ""
    aware_pattern: str = ""
    dj_screen: str = ""
    aware_screen: str = ""

    def __init__(self, pattern: str | None, repl: str, semantics: Semantics) -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        source = strip_r_quotes(pattern)
        if source is None:
            source = self.dj_pattern if semantics == "data_juicer" else self.aware_pattern
        try:
            self.regex = re.compile(source, re.DOTALL)
        except re.error as exc:
            raise ValueError(f"pattern {source!r} is not a valid regular expression ({exc})") from exc
        self.repl = repl
        screen = self.dj_screen if semantics == "data_juicer" else self.aware_screen
        self._screen = re.compile(screen) if screen and strip_r_quotes(pattern) is None else None

    def map_text(self, text: str) -> str:
        if self._screen is not None and not self._screen.search(text):
            return text
        return self.regex.sub(self.repl, text)


@register_op("clean_email_mapper")
class CleanEmailMapper(_PatternMapper):
    """Remove e-mail addresses.

    - `data_juicer`: Data-Juicer's pattern: lowercase-only domains (`bob@Example.COM` stays) and no
      boundaries (an address-shaped piece is cut out of a longer token).
    - `language_aware`: any-case domains with an alphabetic top-level domain, and the address must not be
      glued to letters or digits on either side (Han characters around it are fine).
    """

    dj_pattern = r"[A-Za-z0-9.\-+_]+@[a-z0-9.\-+_]+\.[a-z]+"
    aware_pattern = r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9\-])"
    dj_screen = aware_screen = "@"

    def __init__(
        self, pattern: str | None = None, repl: str = "", semantics: Semantics = "language_aware"
    ) -> None:
        super().__init__(pattern, repl, semantics)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"


@register_op("clean_ip_mapper")
class CleanIpMapper(_PatternMapper):
    """Remove IPv4 and (full, eight-group) IPv6 addresses.

    - `data_juicer`: Data-Juicer's pattern, without boundaries: it also cuts IP-shaped pieces out of
      longer numbers and version strings (`1.2.3.4.5`, `10.0.0.256` loses `10.0.0.25`).
    - `language_aware`: the address must stand alone (no digit, letter or dot glued to it; a sentence's
      final dot is fine).
    """

    dj_pattern = (
        r"(?:(?:1[0-9][0-9]\.)|(?:2[0-4][0-9]\.)|(?:25[0-5]\.)|(?:[1-9][0-9]\.)|(?:[0-9]\.)){3}"
        r"(?:(?:1[0-9][0-9])|(?:2[0-4][0-9])|(?:25[0-5])|(?:[1-9][0-9])|(?:[0-9]))"
        r"|([\da-fA-F]{1,4}:){7}[\da-fA-F]{1,4}"
    )
    aware_pattern = (
        rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"
        r"|(?<![\w:])(?:[\da-fA-F]{1,4}:){7}[\da-fA-F]{1,4}(?![\w:])"
    )
    # An IPv4 address holds "digit.d{1,3}.d{1,3}.digit", an IPv6 one "hex:hex{1,4}:hex" (both semantics).
    dj_screen = aware_screen = r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]|[\da-fA-F]:[\da-fA-F]{1,4}:[\da-fA-F]"

    def __init__(
        self, pattern: str | None = None, repl: str = "", semantics: Semantics = "language_aware"
    ) -> None:
        super().__init__(pattern, repl, semantics)


# Data-Juicer's link pattern (from CleanText): a scheme-like `word:` followed by `/` or any letter/digit,
# or `www.`, or `domain.tld/`, then a run of non-space characters with balanced parentheses that does not
# end in punctuation. Data-Juicer repeats runs (`(?:[^\s()<>]+|...)+`), which backtracks exponentially
# when no valid end follows (a 40-character line takes minutes); repeating single characters instead
# matches the same strings in the same order of preference, in polynomial time (group 1, the link, is
# the same; the inner groups hold their last character instead of their last run).
_DJ_LINK = (
    r"(?i)\b("
    r"(?:[a-z][\w-]+:(?:\/{1,3}|[a-z0-9%])|www\d{0,3}[.]|[a-z0-9.\-]+[.][a-z]{2,4}\/)"
    r"(?:[^\s()<>]|\(([^\s()<>]|(\([^\s()<>]+\)))*\))+"
    r"(?:\(([^\s()<>]|(\([^\s()<>]+\)))*\)|[^\s`!()\[\]{};:'\".,<>?«»“”‘’])"
    r")"
)
# Data-Juicer's own pattern, kept for the equivalence test.
_DJ_LINK_ORIGINAL = (
    r"(?i)\b("
    r"(?:[a-z][\w-]+:(?:\/{1,3}|[a-z0-9%])|www\d{0,3}[.]|[a-z0-9.\-]+[.][a-z]{2,4}\/)"
    r"(?:[^\s()<>]+|\(([^\s()<>]+|(\([^\s()<>]+\)))*\))+"
    r"(?:\(([^\s()<>]+|(\([^\s()<>]+\)))*\)|[^\s`!()\[\]{};:'\".,<>?«»“”‘’])"
    r")"
)
# RFC 3986 characters, ASCII only: Chinese text right after a link is prose, not part of the URL.
_URL_CHAR = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]"
_URL_END = r"[A-Za-z0-9\-_~/#=&%+@$*]"
_AWARE_LINK = (
    r"(?i)(?<![A-Za-z0-9@.\-])"
    r"(?:(?:https?|ftps?|sftp|file|git|ssh|svn|ws|wss)://|www\d{0,3}\.|[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,4}/)"
    rf"(?:{_URL_CHAR}*{_URL_END})?"
)


@register_op("clean_links_mapper")
class CleanLinksMapper(_PatternMapper):
    """Remove URLs.

    - `data_juicer`: Data-Juicer's pattern, which treats any `word:letter` as a scheme, so CSS and prose
      like `background:transparent` or `RAID:Non-RAID…` disappear up to the next whitespace, and a link
      followed by Chinese text takes the Chinese text with it.
    - `language_aware`: a link needs a real scheme (`http://`, `https://`, `ftp://`, …), `www.` or a
      `domain.tld/` start; it consists of ASCII URL characters only and does not end in punctuation.
    """

    dj_pattern = _DJ_LINK
    aware_pattern = _AWARE_LINK
    # Each start of a built-in link holds one of these, matched with the link pattern's own (?i): a
    # scheme's ":" and what follows it, "www", or a domain's ".tld/".
    dj_screen = r"(?i):[/a-z0-9%]|www|\.[a-z]{2,4}/"
    aware_screen = r"(?i)://|www|\.[a-z]{2,4}/"

    def __init__(
        self, pattern: str | None = None, repl: str = "", semantics: Semantics = "language_aware"
    ) -> None:
        super().__init__(pattern, repl, semantics)
