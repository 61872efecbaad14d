"""Loss masks and document boundaries: a store packed from several masked documents, read with isolated
documents, gives every document the loss it has alone (tiny Steel with causal Soft-MoE, Qwen2, Mistral; CPU)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from steelforge.tokens.loader import TokenLoader
from steelforge.tokens.pack import write_token_store
from steelforge.tokens.store import TokenStore

VOCAB = 128


def _docs(n: int = 12, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = int(rng.integers(20, 90))
        ids = rng.integers(1, VOCAB, length)
        mask = np.ones(length, dtype=np.uint8)
        mask[: int(rng.integers(1, length // 2))] = 0  # a "prompt" without loss
        docs.append(("chat", ids, mask))
    return docs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("masked") / "store"
    write_token_store(path, _docs(), tokenizer_name="tiny", tokenizer_fingerprint="fp", shard_tokens=300)
    return path


def _batch(store: Path, **kw) -> dict[str, torch.Tensor]:
    loader = TokenLoader(store, seq_len=160, micro_batch_size=2, grad_accum=1, seed=3, **kw)
    return next(iter(loader))


def test_masks_are_stored_and_old_stores_still_read(store: Path, tmp_path: Path) -> None:
    opened = TokenStore(store)
    assert opened.manifest.to_dict()["version"] == 2 and opened.has_masks and not opened.verify()
    total = sum(int(np.asarray(opened.mask(s)).sum()) for s in opened.shards)
    assert total == sum(int(m.sum()) for _, _, m in _docs())
    plain = tmp_path / "plain"
    write_token_store(plain, [(s, ids) for s, ids, _ in _docs()], tokenizer_name="tiny", tokenizer_fingerprint="fp")
    raw = (plain / "manifest.json").read_text().replace('"version": 2', '"version": 1')
    (plain / "manifest.json").write_text(raw)
    old = TokenStore(plain)  # a version-1 store (no masks) still reads
    assert not old.has_masks and old.mask(old.shards[0]) is None
    assert "mask" not in raw
    from steelforge.errors import DataError

    with pytest.raises(DataError, match="with and without loss masks"):
        write_token_store(tmp_path / "mixed", [("a", [1, 2], [1, 1]), ("a", [3, 4])], tokenizer_name="t",
                          tokenizer_fingerprint="f")


def test_loader_masks_labels_restarts_positions_and_gives_cu_seqlens(store: Path) -> None:
    plain = _batch(store, loss_masks=False)
    assert (plain["labels"] >= 0).all() and "position_ids" not in plain  # today's default: nothing masked
    masked = _batch(store)
    assert torch.equal(masked["input_ids"], plain["input_ids"])
    dropped = masked["labels"] == -100
    assert dropped.any() and torch.equal(masked["labels"][~dropped], plain["labels"][~dropped])
    iso = _batch(store, return_position_ids=True)
    pos = iso["position_ids"]
    starts = (pos == 0).reshape(-1).nonzero().reshape(-1)
    assert torch.equal(iso["cu_seqlens"], torch.cat([starts, torch.tensor([pos.numel()])]).int())
    # the label before each document start (it would predict the next document's first token) is not trained
    for row in range(pos.shape[0]):
        for t in (pos[row, 1:] == 0).nonzero().reshape(-1):
            assert iso["labels"][row, t] == -100


def _steel():
    from steelforge.models.loading import load_model

    torch.manual_seed(0)
    model = load_model({"preset": "tiny-steel", "overrides": {
        "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "n_experts": 2, "softmoe_dispatch": "causal"}})
    assert model.config.softmoe_dispatch == "causal"
    # At its init the experts' output is ~1e-4 of the residual stream: make the Soft-MoE matter, so that a
    # mixture leaking across documents shows in the loss.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".experts." in name:
                param.normal_(0.0, 0.3)
            elif name.endswith("mlp.scale"):
                param.fill_(4.0)
    return model


def _hf(kind: str):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (MistralConfig, MistralForCausalLM)
    torch.manual_seed(0)
    config = config_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        attn_implementation="sdpa")
    return model_cls(config).float()


def _token_losses(model, input_ids, labels, position_ids=None) -> torch.Tensor:
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none")


@pytest.mark.parametrize("kind", ["steel", "qwen2", "mistral"])
def test_per_document_loss_of_a_packed_batch_equals_each_document_alone(store: Path, kind: str) -> None:
    model = (_steel() if kind == "steel" else _hf(kind)).eval()
    batch = _batch(store, return_position_ids=True)
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    compared = 0
    with torch.no_grad():
        packed = _token_losses(model, ids, labels, pos).view(ids.shape)
        unisolated = _token_losses(model, ids, labels).view(ids.shape)  # one long sequence per row
        leaks = 0.0
        for row in range(ids.shape[0]):
            bounds = [*(pos[row] == 0).nonzero().reshape(-1).tolist(), ids.shape[1]]
            for a, b in pairwise(bounds):
                if (labels[row, a:b] == -100).all():
                    continue
                alone = _token_losses(model, ids[row : row + 1, a:b], labels[row : row + 1, a:b])
                torch.testing.assert_close(packed[row, a:b].sum(), alone.sum(), rtol=1e-5, atol=1e-5)
                leaks = max(leaks, float((unisolated[row, a:b].sum() - alone.sum()).abs()))
                compared += 1
    assert compared >= 3
    assert leaks > 1e-3  # without document isolation the later documents see earlier ones: the test can fail
