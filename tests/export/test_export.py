"""`steelforge export`: released folders load with plain transformers, and the model card holds the run's numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from steelforge.export.hf import ExportError, export_checkpoint, resolve_source, stop_token_ids
from steelforge.recipe import recipe_from_dict

pytestmark = pytest.mark.timeout(300)

TINY_STEEL = {"preset": "tiny-steel", "overrides": {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
                                                    "num_attention_heads": 2, "num_key_value_heads": 1, "n_experts": 2}}
TINY_MOXIN = {"preset": "tiny-moxin", "overrides": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run on tiny data: clean -> pack -> pretrain (3 steps, 2 checkpoints kept) + an eval results file."""
    from steelforge.cli import run_stage

    out = tmp_path_factory.mktemp("run")
    recipe = recipe_from_dict({
        "name": "tiny-release", "out_dir": str(out), "seed": 0, "tokenizer": "mistral-v1",
        "data": {"num_workers": 1, "inputs": [{"name": "synthetic", "synthetic": {"num_docs": 150, "seed": 0}}],
                 "process": [{"text_length_filter": {"min_len": 20}}, {"document_deduplicator": {"lowercase": False}}]},
        "pack": {"separator": "auto", "num_workers": 1},
        "model": TINY_MOXIN,
        "pretrain": {"max_steps": 3, "seq_len": 32, "micro_batch_size": 2, "global_batch_size": 2, "log_every": 1,
                     "tensorboard": False, "checkpoint": {"every": 1, "keep_last": 2}},
    })
    for stage in recipe.stages():
        run_stage(stage, recipe)
    # the eval stage's per-task output (another stage writes it; the card must read it tolerantly)
    (out / "eval" / "mmlu").mkdir(parents=True)
    (out / "eval" / "mmlu" / "results.json").write_text(json.dumps(
        {"task": "mmlu", "accuracy": 0.3125, "n": 32, "per_subject": {"algebra": {"accuracy": 0.25, "n": 16}}}
    ))
    (out / "eval" / "gsm8k").mkdir()
    (out / "eval" / "gsm8k" / "results.json").write_text(json.dumps({"accuracy": 0.0625}))  # no n, no task
    return out


def _card_row(card: str, first: str) -> list[str]:
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row starting with {first!r} in the card")


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def test_model_card_holds_the_run_numbers(run_dir: Path, tmp_path: Path) -> None:
    from steelforge.models.flops import flops_per_token
    from steelforge.models.loading import build_config

    result = export_checkpoint(run_dir / "pretrain" / "checkpoints", tmp_path / "out")
    assert result.source.kind == "dcp" and result.source.step == 3 and result.source.run_dir == run_dir
    card = (tmp_path / "out" / "README.md").read_text()

    stats = json.loads((run_dir / "clean" / "stats.json").read_text())
    row = _card_row(card, "clean")
    assert [_num(c) for c in row[1:5]] == [stats["docs_in"], stats["kept"], stats["rejected"], stats["errors"]]

    manifest = json.loads((run_dir / "store" / "manifest.json").read_text())
    per_source: dict[str, list[int]] = {}
    for shard in manifest["shards"]:
        acc = per_source.setdefault(shard["source"], [0, 0])
        acc[0] += shard["documents"]
        acc[1] += shard["tokens"]
    assert len(per_source) >= 2
    for source, (docs, tokens) in per_source.items():
        cells = [line for line in card.splitlines() if line.startswith(f"| store | {source} |")]
        assert len(cells) == 1 and [_num(c) for c in cells[0].strip("|").split("|")[2:4]] == [docs, tokens]

    records = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    row = _card_row(card, "pretrain")
    assert _num(row[1]) == last["step"] == 3 and _num(row[2]) == last["tokens"] == 3 * 2 * 32
    expected_flops = flops_per_token(build_config(TINY_MOXIN), 32, training=True) * last["tokens"]
    assert _num(row[4]) == pytest.approx(expected_flops, rel=1e-3)
    assert _num(_card_row(card, "parameters")[1]) == result.parameters
    assert _card_row(card, "seq_len")[1] == "32" and _card_row(card, "checkpoint.keep_last")[1] == "2"
    assert _card_row(card, "process.0.text_length_filter.min_len")[1] == "20"
    assert _card_row(card, "separator")[1] == "auto"

    assert _card_row(card, "mmlu")[1:] == ["0.3125", "32"]
    assert _card_row(card, "algebra")[1:] == ["0.25", "16"]
    assert _card_row(card, "gsm8k")[1:] == ["0.0625", "None"]
    assert "- `pretrain/checkpoints/step_000000002`" in card and "- `pretrain/checkpoints/step_000000003`" in card
    assert _card_row(card, "Intermediate checkpoints")[1] == "yes"
    assert _card_row(card, "Evaluation results")[1] == "yes"
    assert yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())["pretrain"]["max_steps"] == 3


def _dcp_checkpoint(root: Path, model_spec: dict, tokenizer: str) -> tuple[Path, torch.nn.Module]:
    from steelforge.models.loading import load_model
    from steelforge.train.checkpoint import Checkpointer

    torch.manual_seed(0)
    model = load_model(model_spec, dtype=torch.float32)
    with torch.no_grad():  # weights away from init, so a missed load would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    recipe_yaml = yaml.safe_dump({"name": "parity", "tokenizer": tokenizer, "model": model_spec})
    step = Checkpointer(root / "pretrain" / "checkpoints", recipe_yaml=recipe_yaml).save(5, {"model": model})
    return step, model.eval()


# Runs under `python -I` with steelforge made unimportable: only transformers and the exported folder.
PLAIN_SCRIPT = r"""
import json, sys
sys.modules["steelforge"] = None
try:
    import steelforge  # noqa
    raise SystemExit("steelforge is importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
path, remote = sys.argv[1], sys.argv[2] == "1"
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(path)
ids = torch.tensor([json.loads(sys.argv[3])])
with torch.no_grad():
    logits = model(ids).logits[0]
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         min_new_tokens=6)[0, ids.shape[1]:].tolist()
torch.save({"logits": logits, "generated": gen, "class": type(model).__name__,
            "eos": GenerationConfig.from_pretrained(path).eos_token_id, "template": bool(tok.chat_template)}, sys.argv[4])
"""


@pytest.mark.parametrize(
    ("family", "tokenizer", "remote", "stops"),
    [("steel", "qwen1.5", True, [151645, 151643]), ("moxin", "mistral-v1", False, [2])],
)
def test_export_loads_with_plain_transformers(tmp_path: Path, family: str, tokenizer: str, remote: bool, stops: list[int]) -> None:
    spec = TINY_STEEL if family == "steel" else TINY_MOXIN
    step, model = _dcp_checkpoint(tmp_path / "run", spec, tokenizer)
    out = tmp_path / "released"
    result = export_checkpoint(step, out, max_shard_size="1MB")
    files = set(result.files)
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) > 1
    config = json.loads((out / "config.json").read_text())
    if family == "steel":
        assert {"modeling_steel.py", "configuration_steel.py"} <= files
        assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_steel.")
    else:
        assert config["architectures"] == ["MistralForCausalLM"] and "auto_map" not in config
        assert not [f for f in files if f.endswith(".py")]
    assert sorted(result.stop_token_ids) == sorted(stops)

    prompt = [1, 17, 250, 31, 9, 400, 77]
    proc = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_SCRIPT, str(out), "1" if remote else "0", json.dumps(prompt),
         str(tmp_path / "plain.pt")],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = torch.load(tmp_path / "plain.pt")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ours = model(ids).logits[0]
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                             do_sample=False)[0, len(prompt):].tolist()
    torch.testing.assert_close(plain["logits"], ours, rtol=1e-4, atol=1e-4)
    assert plain["generated"] == gen
    assert sorted(plain["eos"]) == sorted(stops)
    assert plain["template"] == (family == "steel")  # mistral-v1 ships no chat template in this tree


def test_hf_folder_source_and_errors(run_dir: Path, tmp_path: Path) -> None:
    source = resolve_source(run_dir / "pretrain" / "hf")
    assert source.kind == "hf" and source.run_dir == run_dir and source.stage == "pretrain"
    with pytest.raises(ExportError, match="is not a folder"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(ExportError, match="neither a complete checkpoint"):
        resolve_source(tmp_path)
    with pytest.raises(ExportError, match="--dtype"):
        export_checkpoint(run_dir / "pretrain" / "hf", tmp_path / "x", dtype="int4")


def test_stop_tokens_of_the_shipped_tokenizers() -> None:
    from steelforge.tokenizers import load_tokenizer

    assert stop_token_ids(load_tokenizer("qwen1.5")) in ([151643, 151645], [151645, 151643])
    assert stop_token_ids(load_tokenizer("mistral-v1")) == [2]


def test_cli_export(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steelforge.cli import app

    res = CliRunner().invoke(app, ["export", str(run_dir / "pretrain" / "hf"), str(tmp_path / "o"), "--dtype", "bf16"])
    assert res.exit_code == 0, res.output
    assert re.search(r"README\.md", res.output)
    assert json.loads((tmp_path / "o" / "config.json").read_text())["dtype"] == "bfloat16"
