"""Recipe loading: every bad input is one sentence that names the key/file/value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from steelforge.errors import RecipeError
from steelforge.recipe import (
    apply_overrides,
    embedded_recipes,
    load_recipe,
    parse_override,
    resolve_recipe_path,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_recipe_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "name: t\n"))
    assert recipe.name == "t"
    assert recipe.root == Path("runs/t")
    assert recipe.stages() == []
    assert recipe.stage_dir("pack") == Path("runs/t/store")


def test_missing_file_names_path_and_embedded_choices(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"recipe file '.*nope.yaml' does not exist.*demo"):
        load_recipe(tmp_path / "nope.yaml")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="is a folder"):
        load_recipe(tmp_path)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nseed: [1, 2\nout_dir: x\n")
    with pytest.raises(RecipeError, match=r"not valid YAML at line \d+, column \d+"):
        load_recipe(path)


def test_non_mapping_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_unknown_top_level_key_suggests_fix(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"unknown key 'sed'.*did you mean 'seed'"):
        load_recipe(write(tmp_path, "name: t\nsed: 3\n"))


def test_unknown_nested_key_suggests_fix(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"unknown key 'model.prest'.*did you mean 'preset'"):
        load_recipe(write(tmp_path, "model:\n  prest: tiny-steel\n"))


def test_planned_stage_is_named_as_not_available(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="'export' stage is not available"):
        load_recipe(write(tmp_path, "export: {}\n"))


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"'seed' = \"abc\""):
        load_recipe(write(tmp_path, "seed: abc\n"))


def test_overrides_keep_yaml_types(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "name: t\n"), ["seed=7", "out_dir=elsewhere", "model.preset=tiny-moxin"])
    assert recipe.seed == 7
    assert recipe.out_dir == Path("elsewhere")
    assert recipe.model is not None and recipe.model.preset == "tiny-moxin"


def test_override_errors() -> None:
    with pytest.raises(RecipeError, match="has no '='"):
        parse_override("seed")
    with pytest.raises(RecipeError, match="is a value, not a section"):
        apply_overrides({"seed": 3}, ["seed.x=1"])
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=1e-4") == (["a"], 1e-4) or parse_override("a=1e-4")[1] == "1e-4"


def test_override_typo_is_caught(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unknown key 'seeed'"):
        load_recipe(write(tmp_path, "name: t\n"), ["seeed=1"])


def test_embedded_recipes_resolve_by_name() -> None:
    names = embedded_recipes()
    assert "demo" in names
    for name in names:
        assert resolve_recipe_path(name).is_file()


def test_every_shipped_recipe_validates() -> None:
    for name in embedded_recipes():
        recipe = load_recipe(name)
        assert recipe.stages(), f"recipe {name} configures no stage"


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    a = load_recipe(write(tmp_path, "name: t\n"))
    b = load_recipe(write(tmp_path, "name: t\n"), ["seed=99"])
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_recipe(write(tmp_path, "name: t\n")).fingerprint()


def test_override_reaches_into_lists() -> None:
    raw = {"data": {"process": [{"a_op": None}, {"b_op": {"x": 1}}]}}
    apply_overrides(raw, ["data.process.1.b_op.x=5", "data.process.0.a_op.y=2"])
    assert raw["data"]["process"] == [{"a_op": {"y": 2}}, {"b_op": {"x": 5}}]
    with pytest.raises(RecipeError, match=r"is a list of 2 items; index it with 0..1"):
        apply_overrides(raw, ["data.process.7.b_op.x=1"])


def test_stage_fingerprint_ignores_later_stages_and_follows_earlier_ones(tmp_path: Path) -> None:
    """Adding `eval:` must not re-run a finished pretraining; changing `pretrain:` must re-run SFT."""
    base = (
        "name: t\nmodel: {preset: tiny-steel}\n"
        "pretrain: {max_steps: 10, stores: [s]}\n"
        "sft: {datasets: [{path: a.jsonl}]}\n"
    )
    a = load_recipe(write(tmp_path, base))
    with_eval = load_recipe(write(tmp_path, base + "eval: {models: {m: x}, tasks: [cmmlu], data_dir: d}\n"))
    longer = load_recipe(write(tmp_path, base.replace("max_steps: 10", "max_steps: 20")))
    other_seed = load_recipe(write(tmp_path, base + "seed: 7\n"))
    assert a.stage_fingerprint("pretrain") == with_eval.stage_fingerprint("pretrain")
    assert a.stage_fingerprint("sft") == with_eval.stage_fingerprint("sft")
    assert a.stage_fingerprint("pretrain") != longer.stage_fingerprint("pretrain")
    assert a.stage_fingerprint("sft") != longer.stage_fingerprint("sft")  # its input model changes
    assert a.stage_fingerprint("pretrain") != other_seed.stage_fingerprint("pretrain")
    assert a.stage_fingerprint("pretrain") != a.stage_fingerprint("sft")
    with pytest.raises(ValueError, match="unknown stage"):
        a.stage_fingerprint("nope")
