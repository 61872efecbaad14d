"""The `pretrain:` section: typed defaults, batch arithmetic at run time, one-sentence errors."""

from __future__ import annotations

import pytest

from steelforge.errors import RecipeError
from steelforge.recipe import load_recipe, recipe_from_dict
from steelforge.train.config import PretrainConfig


def _recipe(**pretrain):
    return recipe_from_dict({"model": {"preset": "tiny-steel"}, "pretrain": pretrain})


def test_global_batch_must_divide_by_micro_batch_times_world_size() -> None:
    cfg = PretrainConfig(micro_batch_size=4, global_batch_size=24)
    assert cfg.resolve_batch(1) == (6, 24)
    assert cfg.resolve_batch(2) == (3, 24)
    with pytest.raises(RecipeError, match=r"'pretrain.global_batch_size' = 24 is not divisible by .* 4 x 4.* multiple of 16"):
        cfg.resolve_batch(4)


def test_global_batch_in_tokens() -> None:
    cfg = PretrainConfig(seq_len=64, micro_batch_size=2, global_batch_tokens=64 * 8)
    assert cfg.resolve_batch(2) == (2, 8)
    assert PretrainConfig(micro_batch_size=2, grad_accum=3).resolve_batch(4) == (3, 24)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grad_accum": 2, "global_batch_size": 16}, "set only one of grad_accum, global_batch_size"),
        ({"micro_batch_size": 3, "global_batch_size": 16}, "not a multiple of micro_batch_size 3"),
        ({"val_every": 10}, "val_every is set but val_store is not"),
        ({"seq_len": 64, "phases": [{"seq_len": 128}]}, "differs from the first phase's seq_len 128"),
    ],
)
def test_invalid_settings_name_key_value_and_fix(fields: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        _recipe(**fields)


def test_unknown_switch_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(RecipeError, match="did you mean 'precision'"):
        _recipe(speed={"precison": "bf16"})


def test_reference_recipes_load_with_paper_settings() -> None:
    steel = load_recipe("steel-1b/pretrain").pretrain
    assert (steel.seq_len, steel.micro_batch_size, steel.resolve_batch(8)[0]) == (2048, 8, 8)
    assert steel.optim.betas == (0.9, 0.95) and steel.optim.weight_decay == 0.05 and steel.optim.lr == 3e-4
    assert steel.schedule.warmup_steps == 2000 and steel.schedule.min_lr == 0.0 and steel.clip_grad_norm == 1.0
    assert steel.speed.precision == "bf16" and steel.parallel.data_parallel == "fsdp"
    moxin = load_recipe("moxin-7b/pretrain").pretrain
    assert moxin.phases is not None and len(moxin.phases) == 3
    assert [p.seq_len for p in moxin.phases] == [2048, 4096, 4096]
    assert moxin.schedule.min_lr_ratio == 0.1 and moxin.optim.weight_decay == 0.1


def test_data_parallel_none_under_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from steelforge.errors import RecipeError
    from steelforge.train.config import ParallelConfig
    from steelforge.train.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RecipeError, match="unsynchronised copies"):
        init_distributed(ParallelConfig(data_parallel="none"))


def test_attention_is_one_setting() -> None:
    from steelforge.errors import RecipeError
    from steelforge.models.config import ModelSpec
    from steelforge.train.config import PretrainConfig
    from steelforge.train.pretrain import model_spec_with_attention

    default = ModelSpec(preset="tiny-steel")
    assert model_spec_with_attention(default, PretrainConfig()).attn_implementation == "sdpa"
    eager = PretrainConfig.model_validate({"speed": {"attention": "eager"}})
    assert model_spec_with_attention(default, eager).attn_implementation == "eager"
    assert model_spec_with_attention(ModelSpec(preset="tiny-steel", attn_implementation="eager"), eager)
    with pytest.raises(RecipeError, match="disagree"):
        model_spec_with_attention(ModelSpec(preset="tiny-steel", attn_implementation="sdpa"), eager)
    model_only = ModelSpec(preset="tiny-steel", attn_implementation="eager")
    assert model_spec_with_attention(model_only, PretrainConfig()).attn_implementation == "eager"


def test_flash_attention_without_cuda_or_package_is_refused() -> None:
    import torch

    from steelforge.errors import RecipeError
    from steelforge.train.distributed import check_attention, set_attention

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal path is for CPU machines")
    with pytest.raises(RecipeError, match="needs a CUDA GPU"):
        check_attention("flash_attention_2")
    with pytest.raises(RecipeError, match="not one of"):
        check_attention("flash3")
    from _dist_helpers import tiny_qwen2

    model = tiny_qwen2()
    set_attention(model, "eager")
    assert model.config._attn_implementation == "eager"


def test_peak_flops_source_is_named() -> None:
    import torch

    from steelforge.train.metrics import resolve_peak_flops

    assert resolve_peak_flops("cpu", torch.bfloat16, 123.0) == (123e12, "recipe value (pretrain.peak_tflops)")
    peak, source = resolve_peak_flops("cpu", torch.bfloat16)
    assert peak > 0 and source.startswith("measured") and "GEMM on cpu" in source
