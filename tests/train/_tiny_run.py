"""A tiny pretraining world for the resume and launcher tests: a word-level tokenizer folder and a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = 64


def _tokenizer_dir(path: Path, vocab: int = VOCAB) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    raw = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(path)
    return path


def _store(path: Path, fingerprint: str, seed: int = 0, high: int = VOCAB) -> Path:
    from steelforge.tokens.store import Manifest, write_shard

    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, high, size=int(rng.integers(20, 60))) for _ in range(40)]
    tokens = np.concatenate([np.append(d, 0) for d in docs])
    starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]])
    shard = write_shard(path, "tiny-00000", tokens, starts, source="tiny")
    Manifest("tiny", fingerprint, "<|endoftext|>", 0, len(tokens), shards=[shard]).save(path)
    return path


def _fp(tok_dir: Path) -> str:
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint

    return tokenizer_fingerprint(load_tokenizer(str(tok_dir)))
