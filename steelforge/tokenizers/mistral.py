"""The Mistral-7B v1 tokenizer (Moxin-7B's), built offline from the `mistral-common` PyPI package.

`mistral-common` ships the SentencePiece model of Mistral-7B v0.1 (`mistral_common/data/tokenizer.model.v1`,
byte-identical to the `tokenizer.model` of the Mistral-7B-v0.1 and Mixtral releases). transformers' own
SentencePiece conversion turns it into a fast tokenizer that encodes like `sentencepiece` itself (BPE merges
ranked by piece score, byte fallback, the dummy-prefix space before every stretch of text) and adds <s> like the
release; it is saved once as an HF folder next to the Qwen1.5 one (`steelforge.tokenizers.cache.cache_root()`).

As in the release, the special tokens <unk>, <s> and </s> written in a text are read as those tokens
(`sentencepiece` alone would spell them out piece by piece). There is no chat template: the Mistral-7B v0.1 base
release has none, and the `[INST]` template of Mistral-7B-Instruct v0.1 changed between revisions and does
not tokenize like mistral-common's own instruct encoder (which encodes every message on its own).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
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
    from transformers import PreTrainedTokenizerFast

MISTRAL_NAME = "mistral-v1"
MISTRAL_VOCAB_SIZE = 32_000  # Moxin-7B's embedding rows: the SentencePiece vocabulary, unpadded
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
# sha256 of the Mistral-7B-v0.1 release's tokenizer.model (493,443 bytes): 'mistral-v1' names this file only.
MODEL_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"

# Bump when the build below changes, so that cached folders from an older build are not reused.
_BUILD_VERSION = "1"


def mistral_model_path() -> Path:
    """The SentencePiece model shipped by the `mistral-common` package."""
    return packaged_file(
        MISTRAL_NAME, "mistral_common", ("data", "tokenizer.model.v1"), "Mistral SentencePiece model",
        "mistral-common", install="mistral-common sentencepiece",
    )  # fmt: skip


def _checked_model_bytes(path: Path) -> bytes:
    """The model's bytes, refused unless they are the Mistral-7B v1 tokenizer itself."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise SteelforgeError(
            f"{path} is not the Mistral-7B v1 tokenizer (sha256 {digest[:12]}, expected {MODEL_SHA256[:12]}); "
            "reinstall it with `pip install --force-reinstall mistral-common`."
        )
    return data


def mistral_cache_dir() -> Path:
    """The cache folder of the offline Mistral v1 tokenizer; its name changes with the build."""
    digest = hashlib.sha256(_checked_model_bytes(mistral_model_path()))
    digest.update(_BUILD_VERSION.encode())
    return cache_root() / "tokenizers" / f"{MISTRAL_NAME}-{digest.hexdigest()[:16]}"


def _require_sentencepiece() -> None:
    """transformers reads the model with `sentencepiece`; say so in one sentence rather than its long ImportError."""
    if importlib.util.find_spec("sentencepiece") is None:
        raise SteelforgeError(
            f"Building the '{MISTRAL_NAME}' tokenizer needs the sentencepiece package, which is not installed; "
            "install it with `pip install sentencepiece`."
        )


def build_mistral_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """The Mistral v1 tokenizer as a transformers fast tokenizer; its model is copied into `folder` first.

    transformers recognises a SentencePiece file by the name `tokenizer.model`, which is also where a saved
    folder keeps it. `legacy=True` is the release's setting: every stretch of text between special tokens gets
    the dummy-prefix space, as SentencePiece gives each encoded text one.
    """
    from transformers import PreTrainedTokenizerFast

    _require_sentencepiece()
    model = Path(folder) / "tokenizer.model"
    shutil.copyfile(mistral_model_path(), model)
    converted = PreTrainedTokenizerFast.convert_to_native_format(vocab_file=str(model), legacy=True)
    # <s> and </s> are already bos/eos; the release lists no additional special tokens.
    converted.pop("additional_special_tokens", None)
    settings = {
        "unk_token": UNK,
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    return PreTrainedTokenizerFast(**{**converted, **settings})


def ensure_mistral_tokenizer_dir() -> Path:
    """The offline Mistral v1 tokenizer folder, built once per cache (see `publish_tokenizer_dir`)."""
    return publish_tokenizer_dir(mistral_cache_dir(), _write_mistral_dir)


def _write_mistral_dir(folder: Path) -> None:
    build_mistral_tokenizer(folder).save_pretrained(folder)
    # The generic class loads tokenizer.json as saved under transformers 4.x and 5.x; 5.x's LlamaTokenizer
    # would rebuild the pre-tokenizer and lose the dummy prefix before a leading space. The flags are the release's.
    update_tokenizer_config(
        folder / "tokenizer_config.json",
        {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False},
    )
