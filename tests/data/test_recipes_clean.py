"""The cleaning recipes: Steel-LLM's tables exactly, and every operator builds."""

from __future__ import annotations

import json

import pytest

from steelforge.data.ops import build_op
from steelforge.recipe import load_recipe


def _process(recipe_name: str) -> list[tuple[str, dict]]:
    recipe = load_recipe(recipe_name)
    assert recipe.data is not None
    out = []
    for entry in recipe.data.process:
        ((name, params),) = entry.items()
        out.append((name, dict(params or {})))
    return out


@pytest.mark.parametrize(
    ("recipe_name", "kind"), [("steel-1b/clean_text", "text"), ("steel-1b/clean_code", "code")]
)
def test_steel_recipes_match_the_released_configs(fixtures_dir, recipe_name: str, kind: str) -> None:
    index = json.loads((fixtures_dir / "dj_reference" / "ops_index.json").read_text(encoding="utf-8"))[kind]
    expected = [(op["op"], op["params"]) for op in index]
    assert _process(recipe_name) == expected


@pytest.mark.parametrize("recipe_name", ["steel-1b/clean_text", "steel-1b/clean_code"])
@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
def test_steel_recipe_operators_build_in_both_semantics(recipe_name: str, semantics: str) -> None:
    recipe = load_recipe(recipe_name)
    assert recipe.data is not None and recipe.data.semantics == "data_juicer"
    ops = [build_op(entry, semantics) for entry in recipe.data.process]  # type: ignore[arg-type]
    assert [op.name for op in ops] == [name for name, _ in _process(recipe_name)]


def test_moxin_recipe_is_slimpajama_then_dclm() -> None:
    process = dict(_process("moxin-7b/clean"))
    assert list(process) == [
        "slimpajama_short_doc_filter",
        "document_minhash_deduplicator",
        "fasttext_quality_filter",
    ]
    assert process["slimpajama_short_doc_filter"] == {"min_len": 200}
    minhash = process["document_minhash_deduplicator"]
    assert (minhash["window_size"], minhash["jaccard_threshold"]) == (13, 0.8)
    assert process["fasttext_quality_filter"]["keep_fraction"] == 0.1
