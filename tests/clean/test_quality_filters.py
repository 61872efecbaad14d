"""Quality operators: SlimPajama short docs, DCLM fastText quality, language ID, perplexity."""

from __future__ import annotations

import json
import pickle
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.clean.ops import build_op
from steelforge.clean.ops.quality_filters import detect_script_language
from steelforge.errors import RecipeError

# ---- slimpajama_short_doc_filter --------------------------------------------------------------------


def test_short_doc_counts_content_characters_only() -> None:
    op = build_op({"slimpajama_short_doc_filter": {"min_len": 10}}, "data_juicer")
    assert op.compute_stats("a b, c!\n\td...e") == {"content_chars": 5}
    assert op.compute_stats("hello, world!") == {"content_chars": 10}
    assert op.keep({"content_chars": 10}) and not op.keep({"content_chars": 9})
    assert op.explain({"content_chars": 3}) == {"stat": "content_chars", "value": 3, "min": 10, "max": None}


def test_short_doc_semantics_differ_on_full_width_punctuation() -> None:
    text = "你好，世界！「测试」。"
    dj = build_op("slimpajama_short_doc_filter", "data_juicer").compute_stats(text)
    aware = build_op("slimpajama_short_doc_filter", "language_aware").compute_stats(text)
    assert dj == {"content_chars": len(text)}  # SlimPajama removes ASCII punctuation only
    assert aware == {"content_chars": 6}


def test_short_doc_default_threshold_is_200() -> None:
    op = build_op("slimpajama_short_doc_filter", "language_aware")
    assert op.keep(op.compute_stats("x" * 200)) and not op.keep(op.compute_stats("x " * 199))


@settings(max_examples=60, deadline=None)
@given(st.text(), st.text(alphabet=string.punctuation + " \n\t，。！？、「」\u3000"))
def test_short_doc_ignores_inserted_punctuation_and_spaces(text: str, noise: str) -> None:
    op = build_op("slimpajama_short_doc_filter", "language_aware")
    base = op.compute_stats(text)["content_chars"]
    assert op.compute_stats(noise + text + noise)["content_chars"] == base
    assert 0 <= base <= len(text)


# ---- fastText models trained on the fly --------------------------------------------------------------
fasttext = pytest.importorskip("fasttext", reason="fastText bindings absent: pip install steelforge[quality]")

GOOD = [
    "research",
    "study",
    "analysis",
    "theory",
    "evidence",
    "method",
    "history",
    "science",
    "careful",
    "results",
    "explain",
]
BAD = ["click", "buy", "free", "casino", "bonus", "win", "money", "cheap", "deal", "offer", "sale", "now"]


def _train(path, lines: list[str], **kwargs) -> str:
    data = path.with_suffix(".txt")
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(str(data), thread=1, seed=0, verbose=0, **kwargs)
    model.save_model(str(path))
    return str(path)


def _sentence(rng: random.Random, words: list[str], n: int = 12) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory) -> str:
    rng = random.Random(0)
    lines = [f"__label__hq {_sentence(rng, GOOD)}" for _ in range(200)]
    lines += [f"__label__cc {_sentence(rng, BAD)}" for _ in range(200)]
    rng.shuffle(lines)
    return _train(tmp_path_factory.mktemp("ft") / "quality.bin", lines, dim=16, epoch=10)


def test_fasttext_quality_threshold_separates_classes(quality_model: str) -> None:
    op = build_op(
        {"fasttext_quality_filter": {"model_path": quality_model, "min_score": 0.5}}, "language_aware"
    )
    rng = random.Random(1)
    good, bad = _sentence(rng, GOOD), "free casino\nbonus, click now!"
    s_good, s_bad = op.compute_stats(good), op.compute_stats(bad)
    assert s_good["quality_score"] > 0.5 > s_bad["quality_score"]
    assert op.keep(s_good) and not op.keep(s_bad)
    assert op.compute_stats_batch([good, bad]) == [s_good, s_bad]
    assert op.explain(s_bad)["min"] == 0.5


def test_fasttext_quality_keep_fraction_is_calibrated_on_a_sample(quality_model: str, tmp_path) -> None:
    rng = random.Random(2)
    # a graded corpus: the share of good words rises from 0 to 1
    docs = []
    for i in range(200):
        share = i / 199
        docs.append(
            " ".join(rng.choice(GOOD) if rng.random() < share else rng.choice(BAD) for _ in range(12))
        )
    rng.shuffle(docs)
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs), encoding="utf-8")
    op = build_op(
        {
            "fasttext_quality_filter": {
                "model_path": quality_model,
                "keep_fraction": 0.25,
                "calibration_path": str(tmp_path / "*.jsonl"),
                "calibration_text_field": "body",
            }
        },
        "language_aware",
    )
    kept = sum(op.keep(s) for s in op.compute_stats_batch(docs))
    assert 50 <= kept <= 55  # 25% of 200, ties at the threshold kept
    assert "top 0.25" in op.describe()


def test_fasttext_quality_filter_survives_pickling(quality_model: str) -> None:
    op = build_op(
        {"fasttext_quality_filter": {"model_path": quality_model, "min_score": 0.5}}, "language_aware"
    )
    text = _sentence(random.Random(3), GOOD)
    expected = op.compute_stats(text)
    clone = pickle.loads(pickle.dumps(op))
    assert "_ft" not in clone.__dict__
    assert clone.compute_stats(text) == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_score": 0.5}, "needs 'model_path'"),
        ({"model_path": "nope/missing.bin", "min_score": 0.5}, "is not a file"),
        ({"model_path": "MODEL"}, "exactly one of 'min_score'"),
        ({"model_path": "MODEL", "min_score": 0.5, "keep_fraction": 0.1}, "exactly one of 'min_score'"),
        ({"model_path": "MODEL", "keep_fraction": 0.1}, "needs 'calibration_path'"),
        ({"model_path": "MODEL", "min_score": 0.5, "label": "good"}, "is not a label"),
        (
            {"model_path": "MODEL", "keep_fraction": 0.1, "calibration_path": "none/*.jsonl"},
            "matches no file",
        ),
    ],
)
def test_fasttext_quality_filter_errors_name_the_key(quality_model: str, params: dict, message: str) -> None:
    params = {k: (quality_model if v == "MODEL" else v) for k, v in params.items()}
    with pytest.raises(RecipeError, match=message):
        build_op({"fasttext_quality_filter": params}, "language_aware")


# ---- language_id_filter ------------------------------------------------------------------------------
ZH = "机器学习是人工智能的一个分支，它研究计算机怎样模拟人类的学习行为，以获取新的知识和技能。"
EN = "Machine learning is a branch of artificial intelligence that studies how computers learn from data."
CODE = "import os\n\ndef main():\n    path = os.getcwd()\n    return path\n\nif __name__ == '__main__':\n    main()\n"


def test_script_detector_tells_zh_en_code_apart() -> None:
    assert detect_script_language(ZH)[0] == "zh"
    assert detect_script_language(EN)[0] == "en"
    assert detect_script_language(CODE)[0] == "code"
    assert detect_script_language("1234 !!! ...") == ("unknown", 0.0)
    mixed = "深度学习（Deep Learning）是机器学习的分支，常用框架有 PyTorch 和 TensorFlow。"
    assert detect_script_language(mixed)[0] == "zh"


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=300))
def test_script_detector_always_answers_a_known_label_and_a_share(text: str) -> None:
    lang, score = detect_script_language(text)
    assert lang in {"zh", "en", "code", "unknown"}
    assert 0.0 <= score <= 1.0
    assert (score == 0.0) == (lang == "unknown")


def test_language_id_without_model_uses_the_script_detector() -> None:
    op = build_op({"language_id_filter": {"lang": ["zh"], "min_score": 0.5}}, "language_aware")
    stats = op.compute_stats(ZH)
    assert stats["lang"] == "zh" and stats["lang_detector"] == "script" and op.keep(stats)
    rejected = op.compute_stats(EN)
    assert not op.keep(rejected)
    assert op.explain(rejected) == {
        "stat": "lang",
        "value": "en",
        "min": None,
        "max": None,
        "allowed": ["zh"],
    }


def test_language_id_with_a_lid_format_model(tmp_path) -> None:
    rng = random.Random(4)
    zh_chars = list("机器学习是人工智能的一个分支它研究计算机怎样模拟人类行为以获取新知识和技能")
    en_words = [
        "the",
        "machine",
        "learning",
        "branch",
        "of",
        "artificial",
        "intelligence",
        "studies",
        "how",
        "computers",
        "learn",
    ]
    lines = []
    for _ in range(150):
        lines.append("__label__zh " + "".join(rng.choice(zh_chars) for _ in range(20)))
        lines.append("__label__en " + " ".join(rng.choice(en_words) for _ in range(10)))
    model = _train(tmp_path / "lid.bin", lines, dim=16, epoch=10, minn=1, maxn=2)
    op = build_op(
        {"language_id_filter": {"lang": "en", "min_score": 0.6, "model_path": model}}, "language_aware"
    )
    en_stats, zh_stats = op.compute_stats_batch([EN, ZH])
    assert en_stats["lang"] == "en" and en_stats["lang_detector"] == "fasttext" and op.keep(en_stats)
    assert zh_stats["lang"] == "zh" and not op.keep(zh_stats)


def test_language_id_model_path_must_exist() -> None:
    with pytest.raises(RecipeError, match=r"'model_path' = 'missing/lid\.176\.bin' is not a file"):
        build_op(
            {"language_id_filter": {"lang": "zh", "model_path": "missing/lid.176.bin"}}, "language_aware"
        )
