"""`steelforge data compare`: a hand-made corpus whose differences between the semantics are known."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from steelforge.clean.clean_config import CleanConfig
from steelforge.clean.compare import KINDS, compare_semantics
from steelforge.cli import app

# Chinese prose has no spaces: Data-Juicer's words_num_filter (tokenization: false) sees one word.
ZH_LONG = [
    "机器学习是人工智能的一个重要分支，它研究计算机怎样模拟人类的学习行为，以获取新的知识和技能。",
    "长江是中国第一长河，全长约六千三百公里，流经青海、西藏、四川、云南、重庆、湖北等十一个省级行政区。",
]
ZH_SHORT = "今天天气很好，我们去公园散步吧。"  # 16 chars: enough jieba words, too short for min_len 30
EN = "The quick brown fox jumps over the lazy dog near the river bank."
TINY = "hi"

PROCESS = [
    {"words_num_filter": {"lang": "zh", "tokenization": False, "min_num": 3, "max_num": 10000}},
    {"text_length_filter": {"min_len": 30, "max_len": 100000}},
]


def _corpus(tmp_path: Path) -> Path:
    docs = [*ZH_LONG, ZH_SHORT, EN, TINY]
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"body": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )
    return path


def _config(corpus: Path) -> CleanConfig:
    return CleanConfig(inputs=[{"name": "toy", "path": str(corpus), "text_field": "body"}], process=PROCESS)


def test_compare_finds_the_known_differences(tmp_path: Path) -> None:
    report = compare_semantics(_config(_corpus(tmp_path)), tmp_path / "cmp", examples=5)
    assert report.docs_in == 5 and report.errors == 0
    # data_juicer: only the English sentence survives; language_aware also keeps the long Chinese prose
    assert report.kept == {"data_juicer": 1, "language_aware": 3}
    assert report.agree == 2 and report.differ == 3  # EN kept by both, TINY rejected by both at #1
    words, length = report.ops
    assert words.counts == {"only_dj": 2, "only_la": 0, "dj_here_la_elsewhere": 1, "la_here_dj_elsewhere": 0}
    assert length.counts == {"only_dj": 0, "only_la": 0, "dj_here_la_elsewhere": 0, "la_here_dj_elsewhere": 1}
    assert (words.rejected_dj, words.rejected_la, length.rejected_dj, length.rejected_la) == (4, 1, 0, 1)
    for example in words.examples["only_dj"]:
        assert example["data_juicer"] == "rejected by #1 words_num_filter"
        assert example["language_aware"] == "kept"
        assert example["stats_data_juicer"] == {"num_words": 1}
        assert example["stats_language_aware"]["num_words"] >= 10
    (moved,) = length.examples["la_here_dj_elsewhere"]
    assert moved["data_juicer"] == "rejected by #1 words_num_filter"
    assert moved["language_aware"] == "rejected by #2 text_length_filter"
    assert moved["stats_language_aware"] == {"text_len": len(ZH_SHORT)}
    # every input document has exactly one fate in each run, and the per-operator rows add up
    assert report.agree + report.differ == report.docs_in
    assert report.by_source == {"toy": {"docs": 5, "kept_data_juicer": 1, "kept_language_aware": 3}}
    for semantics, key in (("data_juicer", "rejected_dj"), ("language_aware", "rejected_la")):
        assert report.kept[semantics] + report.rejected[semantics] == report.docs_in
        assert sum(getattr(op, key) for op in report.ops) == report.rejected[semantics]
    assert sum(op.counts[k] for op in report.ops for k in KINDS) == report.differ + 1  # a move counts twice


def test_compare_command_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "toy",
                "out_dir": str(tmp_path / "run"),
                "data": _config(corpus).model_dump(mode="json", exclude_none=True),
            }
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["data", "compare", str(recipe), "--examples", "1"])
    assert result.exit_code == 0, result.output
    assert "only dj" in result.output and "words_num_filter" in result.output
    assert "kept per source" in result.output and "3 (60%)" in result.output
    report = json.loads((tmp_path / "run" / "compare" / "compare.json").read_text(encoding="utf-8"))
    assert report["kept"] == {"data_juicer": 1, "language_aware": 3}
    assert report["ops"][0]["differing"] == 3
    assert len(report["ops"][0]["examples"]["only_dj"]) == 1


def test_data_ops_lists_every_operator_with_kind_and_parameters() -> None:
    from steelforge.clean.ops import registered_ops

    result = CliRunner().invoke(app, ["data", "ops"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name, cls in registered_ops().items():
        assert name in result.output and cls.kind in result.output
    assert "keep_fraction=None" in result.output and "min_len=200" in result.output


def test_an_operator_used_twice_is_told_apart_by_position(tmp_path: Path) -> None:
    process = [
        {"text_length_filter": {"min_len": 3, "max_len": 100000}},
        {"words_num_filter": {"lang": "zh", "tokenization": False, "min_num": 3, "max_num": 10000}},
        {"text_length_filter": {"min_len": 30, "max_len": 100000}},
    ]
    config = CleanConfig(
        inputs=[{"name": "toy", "path": str(_corpus(tmp_path)), "text_field": "body"}], process=process
    )
    report = compare_semantics(config, tmp_path / "cmp")
    first, _, last = report.ops
    assert (first.rejected_dj, first.rejected_la) == (1, 1)  # "hi" in both
    assert (last.rejected_dj, last.rejected_la) == (0, 1)  # ZH_SHORT, language_aware only
    assert last.counts["la_here_dj_elsewhere"] == 1
