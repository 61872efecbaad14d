"""Named tokenizers built offline ('qwen1.5', 'mistral-v1'), their cache, and loading by name or folder.

`registry` is the entry point; `qwen` and `mistral` build one named tokenizer each; `cache` is what they share.
"""

from __future__ import annotations

from steelforge.tokenizers.registry import (
    TOKENIZER_NAMES,
    check_vocab_compat,
    load_tokenizer,
    named_tokenizer_dir,
    tokenizer_fingerprint,
)

__all__ = ["TOKENIZER_NAMES", "check_vocab_compat", "load_tokenizer", "named_tokenizer_dir", "tokenizer_fingerprint"]
