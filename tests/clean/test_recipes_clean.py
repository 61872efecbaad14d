"""The cleaning recipes: Steel-LLM's tables exactly, and every operator builds."""

from __future__ import annotations

import json

import pytest

from steelforge.clean.ops import build_op
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


# ---- end to end on Steel-LLM's sample files ------------------------------------------------------------
SUBSET = 100  # documents per source: the whole test stays within seconds


def _subset_inputs(steel_samples_dir, tmp_path, recipe) -> list:
    """The recipe's sources, each pointed at a jsonl of its first SUBSET rows (field mapping unchanged)."""
    from itertools import islice

    from steelforge.clean.io import iter_records

    specs = []
    for spec in recipe.data.inputs:
        source = steel_samples_dir / spec.path.rsplit("/", 1)[-1]
        rows = list(islice(iter_records(source), SUBSET))
        target = tmp_path / f"{spec.name}.jsonl"
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        specs.append(spec.model_copy(update={"path": str(target)}))
    return specs


@pytest.fixture(scope="module")
def steel_text_runs(tmp_path_factory):
    from conftest import shared_path

    from steelforge.clean.pipeline import run_pipeline

    steel_samples_dir = shared_path("data", "steel_samples")
    tmp_path = tmp_path_factory.mktemp("steel_text")
    recipe = load_recipe("steel-1b/clean_text")
    config = recipe.data.model_copy(update={"inputs": _subset_inputs(steel_samples_dir, tmp_path, recipe)})
    return {
        semantics: run_pipeline(config.model_copy(update={"semantics": semantics}), tmp_path / semantics)
        for semantics in ("data_juicer", "language_aware")
    }


@pytest.mark.parametrize("semantics", ["data_juicer", "language_aware"])
def test_steel_text_recipe_runs_end_to_end_and_reconciles(steel_text_runs, semantics: str) -> None:
    from steelforge.clean.io import read_shards

    result = steel_text_runs[semantics]
    assert result.docs_in + result.errors == 3 * SUBSET
    assert result.kept + result.rejected + result.errors == 3 * SUBSET
    kept_ids = [d["id"] for d in read_shards(result.kept_paths)]
    rejected = list(read_shards(result.rejected_paths))
    assert len(kept_ids) == result.kept and len(rejected) == result.rejected
    assert len(set(kept_ids) | {r["id"] for r in rejected}) == result.docs_in  # each document in one place
    names = [next(iter(e)) for e in load_recipe("steel-1b/clean_text").data.process]
    for record in rejected:
        assert record["op"] == names[record["op_index"]]
        assert "duplicate_of" in record or record.get("stat") is not None


def test_steel_text_recipe_kept_fractions(steel_text_runs) -> None:
    """Data-Juicer keeps 14% of Steel-LLM's Chinese samples (15% for these three sources); the
    language-aware semantics, which measures Chinese words and characters correctly, keeps far more."""
    dj = steel_text_runs["data_juicer"]
    la = steel_text_runs["language_aware"]
    dj_fraction = dj.kept / dj.docs_in
    assert 0.08 <= dj_fraction <= 0.35, dj_fraction
    assert la.kept >= 2 * dj.kept


# ---- Moxin recipe end to end with a tiny classifier ------------------------------------------------------
def test_moxin_recipe_runs_with_a_user_classifier(tmp_path) -> None:
    import random

    fasttext = pytest.importorskip(
        "fasttext", reason="fastText bindings absent: pip install steelforge[quality]"
    )
    from steelforge.clean.io import read_shards
    from steelforge.clean.pipeline import run_pipeline
    from steelforge.recipe import read_yaml, recipe_from_dict, resolve_recipe_path

    rng = random.Random(0)
    good = ["research", "study", "analysis", "theory", "evidence", "method", "history", "science"]
    bad = ["click", "buy", "free", "casino", "bonus", "win", "money", "cheap"]
    lines = [f"__label__hq {' '.join(rng.choices(good, k=12))}" for _ in range(200)]
    lines += [f"__label__cc {' '.join(rng.choices(bad, k=12))}" for _ in range(200)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(
        str(tmp_path / "train.txt"), dim=16, epoch=10, thread=1, seed=0, verbose=0
    )
    model.save_model(str(tmp_path / "quality.bin"))

    docs = [" ".join(rng.choices(good if i % 4 == 0 else bad, k=60)) for i in range(40)]
    docs += [docs[0]]  # an exact copy: MinHash-LSH removes it
    docs += ["too short to keep"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")

    raw = read_yaml(resolve_recipe_path("moxin-7b/clean"))
    raw["data"]["inputs"] = [{"name": "web", "path": str(corpus)}]
    quality = raw["data"]["process"][2]["fasttext_quality_filter"]
    quality.update({"model_path": str(tmp_path / "quality.bin"), "calibration_path": str(corpus)})
    recipe = recipe_from_dict(raw)
    result = run_pipeline(recipe.data, tmp_path / "out")
    rejected = {r["id"]: r for r in read_shards(result.rejected_paths)}
    by_op = [r["op"] for r in rejected.values()]
    assert by_op.count("slimpajama_short_doc_filter") == 1
    assert by_op.count("document_minhash_deduplicator") == 1
    assert result.kept + result.rejected == len(docs)
    kept = list(read_shards(result.kept_paths))
    assert 3 <= len(kept) <= 6  # the top 10% of 42 by quality score, ties kept
    assert all(set(d["text"].split()) <= set(good) for d in kept)
