"""Markup and boilerplate mappers: HTML to text, copyright headers, LaTeX macro expansion."""

from __future__ import annotations

import html
import re

from steelforge.clean.ops._text import check_semantics
from steelforge.clean.ops.base import Mapper, Semantics, register_op

# HTML5 element names (plus a few obsolete ones still common on the web). Only these count as tags in
# `language_aware` semantics, so `<sys/ipc.h>`, `<END>`, `a < b > c` or `List<String>` survive.
_HTML_ELEMENTS = [
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "article",
    "aside",
    "audio",
    "b",
    "base",
    "bdi",
    "bdo",
    "big",
    "blockquote",
    "body",
    "br",
    "button",
    "canvas",
    "caption",
    "center",
    "cite",
    "code",
    "col",
    "colgroup",
    "data",
    "datalist",
    "dd",
    "del",
    "details",
    "dfn",
    "dialog",
    "dir",
    "div",
    "dl",
    "dt",
    "em",
    "embed",
    "fieldset",
    "figcaption",
    "figure",
    "font",
    "footer",
    "form",
    "frame",
    "frameset",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hgroup",
    "hr",
    "html",
    "i",
    "iframe",
    "img",
    "input",
    "ins",
    "kbd",
    "label",
    "legend",
    "li",
    "link",
    "main",
    "map",
    "mark",
    "menu",
    "meta",
    "meter",
    "nav",
    "noscript",
    "object",
    "ol",
    "optgroup",
    "option",
    "output",
    "p",
    "param",
    "picture",
    "pre",
    "progress",
    "q",
    "rp",
    "rt",
    "ruby",
    "s",
    "samp",
    "script",
    "section",
    "select",
    "small",
    "source",
    "span",
    "strike",
    "strong",
    "style",
    "sub",
    "summary",
    "sup",
    "table",
    "tbody",
    "td",
    "template",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "time",
    "title",
    "tr",
    "track",
    "tt",
    "u",
    "ul",
    "var",
    "video",
    "wbr",
]
_BLOCK_ELEMENTS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "tr",
        "ul",
    ]
)
_TAG = re.compile(
    r"<(/?)(" + "|".join(sorted(_HTML_ELEMENTS, key=len, reverse=True)) + r")"
    r"""(?=[\s/>])(?:\s+[^<>"']*(?:(?:"[^"]*"|'[^']*')[^<>"']*)*)?/?>""",
    re.IGNORECASE,
)
_INVISIBLE = re.compile(
    r"<(script|style|noscript|template)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL
)
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _tag_to_text(match: re.Match[str]) -> str:
    closing, name = match.group(1), match.group(2).lower()
    if name == "li":
        return "" if closing else "\n*"
    return "\n" if name in _BLOCK_ELEMENTS and (closing or name in ("br", "hr")) else ""


@register_op("clean_html_mapper")
class CleanHtmlMapper(Mapper):
    """Turn HTML into plain text.

    - `data_juicer`: `<li>`/`<ol>` become "\\n*", then selectolax (lexbor) extracts the text: entities are
      decoded, `\\r` becomes `\\n` or disappears, and anything tag-like is deleted (`<sys/ipc.h>`,
      `<END>`, `<http://…>`), often with the text after it.
    - `language_aware`: only real HTML is touched: tags whose name is an HTML element, comments and the
      content of script/style blocks are removed, block-level tags become line breaks, `<li>` becomes
      "\\n*", and entities written with their `;` are decoded. Everything else, `\\r` included, stays.
    """

    def __init__(self, semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]

    def map_text(self, text: str) -> str:
        if self.semantics == "data_juicer":
            from selectolax.lexbor import LexborHTMLParser

            raw = text.replace("<li>", "\n*").replace("</li>", "").replace("<ol>", "\n*").replace("</ol>", "")
            return LexborHTMLParser(raw).text()
        if "<" in text:
            text = _INVISIBLE.sub("", text)
            text = _TAG.sub(_tag_to_text, text)
        if "&" in text:
            text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
        return text


_BLOCK_COMMENT = re.compile(r"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/")
_COPYRIGHT = re.compile("copyright", re.IGNORECASE)
_LICENSE_NOTICE = re.compile(
    r"copyright|\(c\)|©|licen[cs]e|SPDX-License-Identifier|all rights reserved", re.IGNORECASE
)
_COMMENT_LINE = re.compile(
    r"(?://|--|#(?!!|\s*(?:include|import|define|undef|if|ifdef|ifndef|elif|else|endif|pragma|error|line)\b))"
)


@register_op("clean_copyright_mapper")
class CleanCopyrightMapper(Mapper):
    """Remove a copyright header.

    - `data_juicer`: the first `/* … */` block anywhere is removed when it contains "copyright"; when a
      block exists without it nothing happens; when there is no block, all leading lines that start with
      `//`, `#` or `--` or are empty are deleted, copyright or not, so Markdown titles (`# Title`),
      shebangs and leading `#include`/`#pragma` lines disappear.
    - `language_aware`: the first `/* … */` block is removed when it contains "copyright", as before.
      Otherwise the leading run of comment lines (`//`, `--`, `#` but not `#!` shebangs nor preprocessor
      directives such as `#include`) and blank lines is removed only when it carries a copyright or
      licence notice; a shebang on the first line is kept in front of it.
    """

    def __init__(self, semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]

    def map_text(self, text: str) -> str:
        block = _BLOCK_COMMENT.search(text)
        if block and _COPYRIGHT.search(block.group(0)):
            return text[: block.start()] + text[block.end() :]
        if self.semantics == "data_juicer":
            if block:
                return text
            lines = text.split("\n")
            skip = 0
            for line in lines:
                if line and not line.startswith(("//", "#", "--")):
                    break
                skip += 1
            return "\n".join(lines[skip:]) if skip else text
        lines = text.split("\n")
        first = 1 if lines[0].startswith("#!") else 0
        end = first
        while end < len(lines) and (not lines[end].strip() or _COMMENT_LINE.match(lines[end])):
            end += 1
        header = "\n".join(lines[first:end])
        if end == first or not _LICENSE_NOTICE.search(header):
            return text
        return "\n".join(lines[:first] + lines[end:])


_NEWCOMMAND = re.compile(r"\\\bnewcommand\b\*?\{(\\[a-zA-Z0-9]+?)\}\{(.*?)\}$", re.MULTILINE)
_DEF = re.compile(r"\\def\s*(\\[a-zA-Z0-9]+?)\s*\{(.*?)\}$", re.MULTILINE)


def _latex_macros(text: str) -> tuple[dict[str, str], list[tuple[int, int]]]:
    """Argument-free `\\newcommand{\\name}{value}` and `\\def\\name{value}` macros, and where they are defined."""
    macros: dict[str, str] = {}
    spans: list[tuple[int, int]] = []
    for pattern in (_NEWCOMMAND, _DEF):
        for match in pattern.finditer(text):
            macros[match.group(1)] = match.group(2)
            spans.append(match.span())
    return macros, sorted(spans)


@register_op("expand_macro_mapper")
class ExpandMacroMapper(Mapper):
    """Inline LaTeX macros defined without arguments (`\\newcommand{\\x}{…}`, `\\def\\x{…}`).

    - `data_juicer`: each macro is replaced where it is followed by a non-alphanumeric character, the
      definition lines included (`\\newcommand{\\R}{\\mathbb{R}}` becomes `\\newcommand{\\mathbb{R}}{…}`),
      and never at the very end of the text.
    - `language_aware`: definitions are left as written, a macro at the end of the text is expanded too,
      and values are inserted literally whatever script they use.
    """

    def __init__(self, semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]

    def map_text(self, text: str) -> str:
        if "\\newcommand" not in text and "\\def" not in text:
            return text
        macros, spans = _latex_macros(text)
        if self.semantics == "data_juicer":
            for name, value in macros.items():
                text = re.sub(f"({re.escape(name)})([^a-zA-Z0-9])", lambda m, v=value: v + m.group(2), text)
            return text
        patterns = [
            (re.compile(re.escape(name) + r"(?![a-zA-Z0-9])"), value) for name, value in macros.items()
        ]

        def expand(piece: str) -> str:
            for pattern, value in patterns:
                piece = pattern.sub(lambda _m, v=value: v, piece)
            return piece

        out: list[str] = []
        pos = 0
        for start, end in spans:
            if start < pos:
                continue
            out.append(expand(text[pos:start]))
            out.append(text[start:end])
            pos = end
        out.append(expand(text[pos:]))
        return "".join(out)
