"""Quality filters from SlimPajama and DCLM (used by Moxin-7B) and a language-ID filter.

- `slimpajama_short_doc_filter`: SlimPajama's short-document rule (< 200 characters once punctuation
  and whitespace are removed).
- `fasttext_quality_filter`: DCLM's fastText classifier score, kept above a threshold or in a top
  fraction whose threshold is estimated on a calibration sample (see the class docstring).
- `language_id_filter`: a fastText language-ID model (lid.176.bin format) when given, otherwise a
  script-based detector for `zh` / `en` / `code` (documented below).

No operator downloads anything: model paths are the user's files, checked when the recipe is built.
Models load lazily in each worker process and are not pickled with the operator.
"""

from __future__ import annotations

import glob
import math
import string
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import regex

from steelforge.clean.ops.base import Filter, Semantics, register_op
from steelforge.errors import DataError, RecipeError

# ---- SlimPajama -------------------------------------------------------------------------------------
_ASCII_PUNCT_WS = str.maketrans("", "", string.punctuation + string.whitespace)
# Unicode property classes such as \p{P} need the `regex` package (the stdlib `re` has none).
_UNICODE_PUNCT_WS = regex.compile(r"[\p{P}\p{S}\p{Z}\s]+")


@register_op("slimpajama_short_doc_filter")
class SlimPajamaShortDocFilter(Filter):
    """Drop documents with fewer than `min_len` characters once punctuation and whitespace are removed.

    SlimPajama (Cerebras, 2023) removed 1.86% of RedPajama this way with `min_len: 200`.
    `data_juicer` semantics reproduce SlimPajama's rule literally: ASCII punctuation (`string.punctuation`)
    and whitespace are removed, so full-width Chinese punctuation (，。「」) still counts as content.
    `language_aware` removes every Unicode punctuation, symbol and separator character (the Unicode
    counterpart of `string.punctuation`, which also holds symbols such as `<>$+=`), so a Chinese and
    an English document of the same substance measure alike.
    """

    stat_key = "content_chars"

    def __init__(self, min_len: int = 200, semantics: Semantics = "language_aware") -> None:
        super().__init__(semantics=semantics)
        if min_len < 0:
            raise ValueError("min_len must be >= 0")
        self.min_len = int(min_len)

    def compute_stats(self, text: str) -> dict[str, Any]:
        if self.semantics == "data_juicer":
            content = len(text.translate(_ASCII_PUNCT_WS))
        else:
            content = len(_UNICODE_PUNCT_WS.sub("", text))
        return {self.stat_key: content}

    def keep(self, stats: dict[str, Any]) -> bool:
        return stats[self.stat_key] >= self.min_len

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {"stat": self.stat_key, "value": stats[self.stat_key], "min": self.min_len, "max": None}

    def describe(self) -> str:
        return f"{self.name}[>= {self.min_len}]"


# ---- fastText helpers -------------------------------------------------------------------------------
def require_model_file(op: str, key: str, path: str | Path | None) -> Path:
    """The model file a parameter names, or a `RecipeError` saying which key to fix."""
    if path is None or str(path) == "":
        raise RecipeError(
            f"operator '{op}' needs '{key}': the path of a model file you supply (nothing is downloaded)"
        )
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise RecipeError(
            f"operator '{op}' parameter '{key}' = '{path}' is not a file; point it at your model file"
        )
    return resolved


def load_fasttext(op: str, path: Path) -> Any:
    """Load a fastText `.bin` model; a missing package or a bad file is one clear sentence."""
    try:
        import fasttext
    except ImportError as exc:
        raise RecipeError(
            f"operator '{op}' needs the fastText bindings; install them with `pip install steelforge[quality]`"
        ) from exc
    # fastText prints a deprecation warning on every load_model call; it is noise for users.
    fasttext.FastText.eprint = lambda *_args, **_kwargs: None
    try:
        return fasttext.load_model(str(path))
    except ValueError as exc:
        raise DataError(f"operator '{op}': '{path}' is not a fastText model file ({exc})") from exc


def fasttext_line(text: str) -> str:
    """fastText predicts one line at a time: newlines become spaces (as DCLM and Data-Juicer do)."""
    return " ".join(text.strip().splitlines())


class _FastTextFilter(Filter):
    """Shared lazy loading: the model is opened on first use in each process and never pickled."""

    model_path: Path

    def _model(self) -> Any:
        model = self.__dict__.get("_ft")
        if model is None:
            model = self.__dict__["_ft"] = load_fasttext(self.name, self.model_path)
        return model

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_ft", None)
        return state

    def _predict(self, texts: Sequence[str], k: int) -> tuple[list[list[str]], list[Any]]:
        labels, probs = self._model().predict([fasttext_line(t) for t in texts], k=k)
        return labels, probs

    def compute_stats(self, text: str) -> dict[str, Any]:
        return self.compute_stats_batch([text])[0]

    def compute_stats_batch(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        raise NotImplementedError


# ---- DCLM quality classifier ------------------------------------------------------------------------
@register_op("fasttext_quality_filter")
class FastTextQualityFilter(_FastTextFilter):
    """DCLM-style quality filter: keep documents whose fastText score for `label` is high enough.

    The score is the classifier's probability of `label` (DCLM: `__label__hq`, trained on OpenHermes /
    ELI5 positives against web negatives) on the text with newlines turned into spaces.

    Set exactly one of:
    - `min_score`: keep when score >= min_score (DCLM's released filter works this way);
    - `keep_fraction`: keep roughly the top fraction of documents. A true top fraction needs every
      score before any decision; instead the threshold is estimated once, when the operator is built,
      as the (1 - keep_fraction) quantile of the scores of the first `calibration_docs` documents of
      `calibration_path` (a glob of jsonl/json/parquet files; normally the same files as the input).
      Decisions then stay per document and streaming, and the kept fraction on the whole corpus
      matches the target up to sampling error (about ±1% for 10,000 calibration documents).
    """

    stat_key = "quality_score"

    def __init__(
        self,
        model_path: str | None = None,
        label: str = "__label__hq",
        min_score: float | None = None,
        keep_fraction: float | None = None,
        calibration_path: str | None = None,
        calibration_text_field: str = "text",
        calibration_docs: int = 10_000,
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(semantics=semantics)
        self.model_path = require_model_file("fasttext_quality_filter", "model_path", model_path)
        self.label = label if label.startswith("__label__") else f"__label__{label}"
        if (min_score is None) == (keep_fraction is None):
            raise RecipeError(
                "operator 'fasttext_quality_filter' needs exactly one of 'min_score' (a fixed threshold) "
                "or 'keep_fraction' (top share of documents)"
            )
        labels = self._model().get_labels()
        if self.label not in labels:
            raise RecipeError(
                f"operator 'fasttext_quality_filter' parameter 'label' = '{label}' is not a label of "
                f"'{model_path}'; its labels are: {', '.join(labels)}"
            )
        self.keep_fraction = keep_fraction
        if keep_fraction is not None:
            if not 0.0 < keep_fraction <= 1.0:
                raise ValueError("keep_fraction must be in (0, 1]")
            if calibration_path is None:
                raise RecipeError(
                    "operator 'fasttext_quality_filter' with 'keep_fraction' needs 'calibration_path': a glob "
                    "of documents (usually the input files) to estimate the score threshold on"
                )
            texts = list(
                islice(_calibration_texts(calibration_path, calibration_text_field), calibration_docs)
            )
            if not texts:
                raise DataError(
                    f"operator 'fasttext_quality_filter': no documents found in '{calibration_path}'"
                )
            min_score = self.calibrate(texts, keep_fraction)
        self.min_score = float(min_score)  # type: ignore[arg-type]

    def scores(self, texts: Sequence[str]) -> list[float]:
        """The probability of `self.label` for each text, rounded to 6 decimals (as stored in stats)."""
        labels, probs = self._predict(texts, k=-1)
        out = []
        for labs, ps in zip(labels, probs, strict=True):
            score = next((float(p) for lab, p in zip(labs, ps, strict=True) if lab == self.label), 0.0)
            out.append(round(score, 6))
        return out

    def calibrate(self, texts: Sequence[str], keep_fraction: float) -> float:
        """The score threshold that keeps `keep_fraction` of `texts` (ties at the threshold are kept)."""
        ranked = sorted(self.scores(texts), reverse=True)
        n_keep = max(1, math.ceil(keep_fraction * len(ranked)))
        return ranked[n_keep - 1]

    def compute_stats_batch(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return [{self.stat_key: s} for s in self.scores(texts)]

    def keep(self, stats: dict[str, Any]) -> bool:
        return stats[self.stat_key] >= self.min_score

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {"stat": self.stat_key, "value": stats[self.stat_key], "min": self.min_score, "max": None}

    def describe(self) -> str:
        if self.keep_fraction is not None:
            return f"{self.name}[top {self.keep_fraction:g}: score >= {self.min_score:.4g}]"
        return f"{self.name}[score >= {self.min_score:g}]"


def _calibration_texts(pattern: str, text_field: str):
    from steelforge.clean.io import iter_records

    paths = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
    if not paths:
        raise RecipeError(
            f"operator 'fasttext_quality_filter' parameter 'calibration_path' = '{pattern}' matches no file"
        )
    for path in paths:
        for row in iter_records(path):
            text = row.get(text_field)
            if isinstance(text, str) and text:
                yield text


# ---- language identification ------------------------------------------------------------------------
_HAN = regex.compile(r"\p{Han}")
_LATIN = regex.compile(r"\p{Latin}")
_LETTER = regex.compile(r"\p{L}")
_CODE_LINE = regex.compile(
    r"""^\s*(?:
        [#@]\s*(?:include|define|pragma|import|if|endif|ifdef|ifndef)\b   # C preprocessor, decorators
      | (?:def|class|import|from|return|package|public|private|protected|static|function|const|let|var
          |fn|func|struct|enum|impl|interface|module|using|namespace|template|typedef|async|await
          |elif|else|for|while|switch|case|try|catch|except|finally|throw|raise|yield|lambda)\b
      | [}\])]+[;,)]*\s*$                                                  # closing brackets alone
      | //|/\*|\*/|\#!                                                     # comments, shebang
    )
    | (?:[;{}]|=>|->|:=|\)\s*:|\)\s*\{)\s*$                                # statement / block endings
    | ^\s*[\w.\[\]]+\s*(?:[-+*/%|&^]?=)\s*\S                               # assignments
    """,
    regex.VERBOSE | regex.MULTILINE,
)


def detect_script_language(text: str) -> tuple[str, float]:
    """Script-based language guess without a model: `zh`, `en`, `code` or `unknown`, with a score.

    - `code` when at least 50% of the non-empty lines look like source code (keywords at the line
      start, assignments, `;`/`{`/`}` line endings, comments); score = that share of lines.
    - otherwise `zh` when Han characters are at least 30% of the letters (Chinese text quotes English
      terms), score = the Han share; `en` when Latin letters are the majority (so French or German also
      come out as `en`: this detector knows scripts, not Latin-script languages), score = the Latin
      share; `unknown` (score 0) for text without letters or in other scripts.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        code_lines = sum(1 for line in lines if _CODE_LINE.search(line))
        code_share = code_lines / len(lines)
        if code_share >= 0.5:
            return "code", code_share
    letters = len(_LETTER.findall(text))
    if not letters:
        return "unknown", 0.0
    han = len(_HAN.findall(text)) / letters
    if han >= 0.3:
        return "zh", han
    latin = len(_LATIN.findall(text)) / letters
    if latin > 0.5:
        return "en", latin
    return "unknown", 0.0


@register_op("language_id_filter")
class LanguageIdFilter(_FastTextFilter):
    """Keep documents in the wanted language(s) whose language score is at least `min_score`.

    With `model_path` (a fastText language-ID model in lid.176.bin format, supplied by the user) it
    works like Data-Juicer's `language_id_score_filter`: the lowercased text with newlines as spaces is
    classified and the top label (`zh`, `en`, ...) and its probability are the statistics. Without a
    model it uses `detect_script_language` (zh / en / code / unknown by script and code-line shape);
    the stats say which detector ran. `lang` may be one code, a list, or empty to keep any language
    above `min_score`.
    """

    def __init__(
        self,
        lang: str | list[str] = "",
        min_score: float = 0.8,
        model_path: str | None = None,
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(semantics=semantics)
        langs = [lang] if isinstance(lang, str) else list(lang)
        self.langs = {code.strip().lower() for code in langs if code and code.strip()}
        self.min_score = float(min_score)
        self.model_path = (
            require_model_file("language_id_filter", "model_path", model_path)
            if model_path is not None
            else None
        )  # type: ignore[assignment]
        if self.model_path is not None:
            self._model()  # fail at build time on a file that is not a fastText model

    def compute_stats_batch(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        if self.model_path is None:
            out = []
            for text in texts:
                lang, score = detect_script_language(text)
                out.append({"lang": lang, "lang_score": round(score, 6), "lang_detector": "script"})
            return out
        labels, probs = self._predict([t.lower() for t in texts], k=1)
        return [
            {
                "lang": (labs[0].removeprefix("__label__") if len(labs) else "unknown"),
                "lang_score": round(float(ps[0]), 6) if len(ps) else 0.0,
                "lang_detector": "fasttext",
            }
            for labs, ps in zip(labels, probs, strict=True)
        ]

    def keep(self, stats: dict[str, Any]) -> bool:
        if self.langs and stats["lang"] not in self.langs:
            return False
        return stats["lang_score"] >= self.min_score

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        if self.langs and stats["lang"] not in self.langs:
            return {
                "stat": "lang",
                "value": stats["lang"],
                "min": None,
                "max": None,
                "allowed": sorted(self.langs),
            }
        return {"stat": "lang_score", "value": stats["lang_score"], "min": self.min_score, "max": None}

    def describe(self) -> str:
        langs = ",".join(sorted(self.langs)) or "any"
        detector = "fasttext" if self.model_path is not None else "script"
        return f"{self.name}[{langs} >= {self.min_score:g}, {detector}]"
