"""Loading from every kind of source, Auto-class registration, export that loads without steelforge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from steelforge.errors import RecipeError
from steelforge.models.loading import build_config, load_model
from steelforge.models.steel import SteelConfig, SteelForCausalLM

TINY = {
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize(
    ("config_class", "model_class"),
    [(Qwen2Config, Qwen2ForCausalLM), (MistralConfig, MistralForCausalLM), (LlamaConfig, LlamaForCausalLM)],
)
def test_hf_folder_of_a_native_architecture_loads(tmp_path, config_class, model_class):
    torch.manual_seed(0)
    reference = model_class(config_class(**TINY))
    reference.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is model_class
    ids = torch.randint(0, 256, (2, 7))
    torch.testing.assert_close(_logits(loaded, ids), _logits(reference, ids))


def test_auto_classes_know_steel(tmp_path):
    config = AutoConfig.for_model("steel", **TINY, n_experts=2)
    assert isinstance(config, SteelConfig) and config.softmoe_dispatch == "causal"
    model = AutoModelForCausalLM.from_config(config)
    assert isinstance(model, SteelForCausalLM)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code: registered by the package
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(_logits(again, ids), _logits(model, ids))
    through_loader = load_model(tmp_path)  # config.json carries auto_map, yet the package's own class is used
    assert type(through_loader) is SteelForCausalLM
    torch.testing.assert_close(_logits(through_loader, ids), _logits(model, ids))


ISOLATED_LOAD = textwrap.dedent(
    """
    import importlib.util, os, sys
    repo_root, exchange, *exports = sys.argv[1:]
    # drop the repository and the editable install of steelforge from this interpreter
    sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__name__", type(f).__name__).lower()]
    sys.path = [p for p in sys.path if p and os.path.abspath(p) != repo_root]
    sys.path_importer_cache.clear()
    assert importlib.util.find_spec("steelforge") is None, "steelforge is still importable"
    import torch
    from transformers import AutoModelForCausalLM
    ids = torch.load(exchange)["ids"]
    results = {}
    for export in exports:
        model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            results[export] = model(ids).logits
    assert "steelforge" not in sys.modules
    torch.save(results, exchange)
    """
)


def test_export_loads_where_steelforge_is_absent(tmp_path, make_model):
    models = {}
    for mode in ("causal", "sequence"):
        model = make_model(softmoe_dispatch=mode)
        export = tmp_path / f"export-{mode}"
        model.save_pretrained(export)
        config = json.loads((export / "config.json").read_text())
        assert config["auto_map"] == {
            "AutoConfig": "configuration_steel.SteelConfig",
            "AutoModelForCausalLM": "modeling_steel.SteelForCausalLM",
        }
        assert config["softmoe_dispatch"] == mode
        for source in (export / "configuration_steel.py", export / "modeling_steel.py"):
            imports = [
                line for line in source.read_text().splitlines() if line.startswith(("import ", "from "))
            ]
            assert not [line for line in imports if "steelforge" in line], imports
        models[str(export)] = model

    ids = torch.randint(0, 512, (2, 11))
    exchange = tmp_path / "exchange.pt"
    torch.save({"ids": ids}, exchange)
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    script = tmp_path / "isolated_load.py"
    script.write_text(ISOLATED_LOAD)
    result = subprocess.run(
        [sys.executable, "-I", str(script), repo_root, str(exchange), *models],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logits = torch.load(exchange)
    for export, model in models.items():
        torch.testing.assert_close(logits[export], _logits(model, ids), atol=0, rtol=0)


def test_recipe_block_with_overrides():
    config = build_config({"preset": "tiny-steel", "overrides": {"num_hidden_layers": 1, "rope_theta": 5e5}})
    assert config.num_hidden_layers == 1 and config.rope_parameters["rope_theta"] == 5e5


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no-such-preset", "neither a preset"),
        ({"preset": "tiny-steel", "overrides": {"hiden_size": 3}}, "model.overrides.hiden_size"),
        ({"preset": "tiny-steel", "path": "x"}, "exactly one"),
        ({"preset": "tiny-steel", "colour": "red"}, "model.colour"),
    ],
)
def test_bad_sources_are_one_sentence_errors(source, message):
    with pytest.raises(RecipeError, match=message):
        build_config(source)


def test_folder_needing_unknown_remote_code_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "my_secret_arch", "auto_map": {"AutoModelForCausalLM": "evil.Model"}})
    )
    (tmp_path / "evil.py").write_text("raise RuntimeError('remote code executed')\n")
    with pytest.raises(RecipeError, match="never runs code"):
        load_model(tmp_path)
