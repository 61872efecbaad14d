"""`steelforge sample`: continuations from an exported model folder (model + tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steelforge.errors import SteelforgeError
from steelforge.infer.sample import generate_samples
from steelforge.models.loading import load_model
from steelforge.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    spec = {
        "preset": "tiny-steel",
        "overrides": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 2,
                      "num_key_value_heads": 1, "n_experts": 2},
    }
    load_model(spec).save_pretrained(out)
    load_tokenizer("qwen1.5").save_pretrained(out)
    return out


def test_greedy_samples_are_deterministic_and_bounded(model_dir: Path) -> None:
    prompts = ["小明有3个苹果，", "def "]
    first = generate_samples(model_dir, prompts, max_new_tokens=4)
    second = generate_samples(model_dir, prompts, max_new_tokens=4)
    assert first == second
    assert len(first) == 2 and all(isinstance(text, str) for text in first)
    sampled = generate_samples(model_dir, prompts, max_new_tokens=4, temperature=1.0, seed=1)
    assert sampled == generate_samples(model_dir, prompts, max_new_tokens=4, temperature=1.0, seed=1)


def test_folder_without_model_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(SteelforgeError, match=r"has no config\.json"):
        generate_samples(tmp_path, ["x"])


def test_stop_tokens_come_from_the_generation_config_and_tokenizer() -> None:
    from types import SimpleNamespace

    from steelforge.infer.sample import stop_token_ids

    mistral = load_tokenizer("mistral-v1")
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=2))
    assert stop_token_ids(model, mistral) == [2]  # </s>, not <unk> (what "<|im_end|>" converts to)
    assert mistral.convert_ids_to_tokens(2) == "</s>"
    qwen = load_tokenizer("qwen1.5")
    im_end = qwen.convert_tokens_to_ids("<|im_end|>")
    endoftext = qwen.convert_tokens_to_ids("<|endoftext|>")
    pretrained = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[endoftext]))
    assert stop_token_ids(pretrained, qwen) == [endoftext, qwen.eos_token_id] and im_end == qwen.eos_token_id
    with pytest.raises(SteelforgeError, match="end-of-sequence"):
        stop_token_ids(SimpleNamespace(generation_config=None), SimpleNamespace(eos_token_id=None))
