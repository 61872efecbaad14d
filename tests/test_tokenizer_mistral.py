"""The offline 'mistral-v1' tokenizer against `sentencepiece` and mistral-common on the same model file."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from steelforge.errors import SteelforgeError
from steelforge.tokenizers import mistral as tm
from steelforge.tokenizers import registry as tk

ROOT = Path(__file__).resolve().parents[1]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's, we're, they'll, I'd, you've, SHE'S.",
    "钢铁是怎样炼成的？这是一部关于理想与奋斗的小说，讲述了主人公在艰苦环境中成长的故事。",
    "中华人民共和国成立于1949年10月1日，首都北京。长江全长约6300公里。",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # comment\n\n\n",
    "a    b\n\n\n\nc\t\t\td   \n  \n\t ",
    "   leading spaces and trailing spaces   ",
    " x",
    "  two leading",
    "\n\n\n",
    "\nnewline first",
    "\r\n\r\nwindows\r\n",
    " ",
    "\t",
    "",
    "ＡＢＣ１２３，全角字符：（ｔｅｓｔ）！？「引号」",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇨🇳 heart ❤️ hieroglyph 𓀀",
    "combining: e\u0301 a\u0308 n\u0303 — decomposed vs é ä ñ; Hangul 한국어 \u1100\u1161",
    "numbers 1234567890 3.14159 -42 1e10 ١٢٣ ⅷ 2024",
    "混合 scripts: русский текст, العربية, हिन्दी, 日本語のテキスト, ελληνικά.",
    "URL https://example.com/path?q=1&r=2 email a.b@c.org IP 192.168.0.1",
    "\u200b\u200c\u200d zero width; \ufeff BOM; \u00a0 nbsp; \u3000 ideographic space; \x00\x01\x7f controls",
    "x" * 300,
    "哈" * 100,
    "!!!???...,,,;;;''\"\"",
]
SPECIAL_TEXTS = ("<s>", "</s>", "<unk>")


@pytest.fixture(scope="module")
def mistral():
    return tk.load_tokenizer(tm.MISTRAL_NAME)


@pytest.fixture(scope="module")
def spm():
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(tm.mistral_model_path()))


@pytest.fixture(scope="module")
def mistral_common():
    """mistral-common's own tokenizer over the same file (it encodes with sentencepiece underneath)."""
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

    return SentencePieceTokenizer(tm.mistral_model_path())


def test_model_file_is_the_mistral_7b_v1_release() -> None:
    data = tm.mistral_model_path().read_bytes()
    assert len(data) == 493_443 and hashlib.sha256(data).hexdigest() == tm.MODEL_SHA256


@pytest.mark.parametrize("text", CORPUS)
def test_ids_identical_to_sentencepiece_and_mistral_common(mistral, spm, mistral_common, text: str) -> None:
    ids = mistral.encode(text)
    assert ids == [tm.BOS_ID, *spm.encode(text)]
    assert ids == mistral_common.encode(text, bos=True, eos=False)
    assert mistral.decode(ids, skip_special_tokens=True) == spm.decode(ids[1:]) == text


def test_batch_encoding_of_the_pack_stage(mistral, spm) -> None:
    """pack encodes batches with the backend tokenizer and no BOS."""
    encodings = mistral.backend_tokenizer.encode_batch_fast(CORPUS, add_special_tokens=False)
    assert [e.ids for e in encodings] == [spm.encode(text) for text in CORPUS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=120),
        st.text(
            alphabet=st.sampled_from(list(" \t\n\r\u3000▁'sd0123456789中文abcX.!?😀𓀀\u0301<>/")), max_size=60
        ),
    )
)
def test_random_unicode_matches_sentencepiece(mistral, spm, text: str) -> None:
    assume(not any(special in text for special in SPECIAL_TEXTS))
    ids = mistral.encode(text)
    assert ids == [tm.BOS_ID, *spm.encode(text)]
    decoded = mistral.decode(ids, skip_special_tokens=True)
    assert decoded == spm.decode(ids[1:])
    if "▁" not in text:  # SentencePiece writes spaces as "▁", so only a text without it comes back verbatim
        assert decoded == text


def test_vocab_and_special_tokens_as_released(mistral) -> None:
    assert len(mistral) == len(mistral.get_vocab()) == tm.MISTRAL_VOCAB_SIZE
    assert (mistral.unk_token_id, mistral.bos_token_id, mistral.eos_token_id) == (
        tm.UNK_ID,
        tm.BOS_ID,
        tm.EOS_ID,
    )
    assert mistral.convert_ids_to_tokens([0, 1, 2]) == [tm.UNK, tm.BOS, tm.EOS]
    assert mistral.pad_token is None and mistral.chat_template is None
    assert mistral.add_bos_token and not mistral.add_eos_token
    assert mistral.encode("hi") == [tm.BOS_ID, 12014]
    assert mistral.encode("hi", add_special_tokens=False) == [12014]
    assert all(token.special for token in mistral.added_tokens_decoder.values())


def test_digits_split_and_byte_fallback(mistral) -> None:
    assert mistral.convert_ids_to_tokens(mistral.encode("2024")) == ["<s>", "▁", "2", "0", "2", "4"]
    tokens = mistral.convert_ids_to_tokens(mistral.encode("𓀀", add_special_tokens=False))
    assert tokens == ["▁", "<0xF0>", "<0x93>", "<0x80>", "<0x80>"]
    assert mistral.unk_token_id not in mistral.encode("".join(chr(c) for c in range(0x13000, 0x13040)))


def test_special_tokens_in_text_are_read_as_tokens(mistral) -> None:
    ids = mistral.encode("a</s>b<s>c<unk>", add_special_tokens=False)
    assert ids == [264, tm.EOS_ID, 287, tm.BOS_ID, 277, tm.UNK_ID]


def test_fingerprint_and_vocab_compat_with_moxin(mistral, tmp_path) -> None:
    from steelforge.models.presets import PRESETS

    fresh = tm.build_mistral_tokenizer(tmp_path)
    assert tk.tokenizer_fingerprint(mistral) == tk.tokenizer_fingerprint(fresh)
    assert [fresh.encode(text) for text in CORPUS] == [mistral.encode(text) for text in CORPUS]
    tk.check_vocab_compat(mistral, PRESETS["moxin-7b"].fields["vocab_size"])
    with pytest.raises(SteelforgeError, match=r"31,999 rows.*needs at least 32,000"):
        tk.check_vocab_compat(mistral, 31_999)


def test_cached_folder_loads_by_path(mistral) -> None:
    folder = tm.ensure_mistral_tokenizer_dir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["add_bos_token"] is True
    assert tk.load_tokenizer(str(folder)).encode(" 钢铁  steel\n") == mistral.encode(" 钢铁  steel\n")


def test_built_once_then_reused_from_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEELFORGE_CACHE", str(tmp_path))
    builds: list[Path] = []
    real_build = tm.build_mistral_tokenizer

    def counting_build(folder: Path):
        builds.append(folder)
        return real_build(folder)

    monkeypatch.setattr(tm, "build_mistral_tokenizer", counting_build)
    tk.load_tokenizer.cache_clear()
    try:
        first = tk.load_tokenizer(tm.MISTRAL_NAME)
        assert tk.load_tokenizer(tm.MISTRAL_NAME) is first
        tk.load_tokenizer.cache_clear()
        again = tk.load_tokenizer(tm.MISTRAL_NAME)
    finally:
        tk.load_tokenizer.cache_clear()
    assert len(builds) == 1 and again is not first
    assert again.encode("steel 42") == first.encode("steel 42")
    target = tm.mistral_cache_dir()
    assert target.parent == tmp_path / "tokenizers" and target.name.startswith("mistral-v1-")
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no half-written leftovers


def test_cache_folder_follows_the_build_version(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEELFORGE_CACHE", str(tmp_path))
    current = tm.mistral_cache_dir()
    monkeypatch.setattr(tm, "_BUILD_VERSION", tm._BUILD_VERSION + "-next")
    assert tm.mistral_cache_dir() != current and tm.mistral_cache_dir().parent == current.parent


def test_another_model_file_is_refused(tmp_path, monkeypatch) -> None:
    edited = tmp_path / "tokenizer.model.v1"
    edited.write_bytes(tm.mistral_model_path().read_bytes()[:-1])
    monkeypatch.setattr(tm, "mistral_model_path", lambda: edited)
    with pytest.raises(
        SteelforgeError, match=r"is not the Mistral-7B v1 tokenizer.*pip install --force-reinstall"
    ):
        tm.mistral_cache_dir()


def test_missing_mistral_common_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mistral_common", None)
    with pytest.raises(SteelforgeError, match=r"mistral-common package, which is not installed.*pip install"):
        tm.mistral_model_path()


def test_missing_sentencepiece_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(SteelforgeError, match=r"sentencepiece package.*`pip install sentencepiece`"):
        tm.build_mistral_tokenizer(tmp_path)


def test_names_are_listed_in_errors(tmp_path) -> None:
    with pytest.raises(SteelforgeError, match=r"does not exist.*'qwen1\.5' or 'mistral-v1'"):
        tk.load_tokenizer(str(tmp_path / "mistral"))
    with pytest.raises(SteelforgeError, match=r"Unknown tokenizer name 'llama'.*'mistral-v1'"):
        tk.named_tokenizer_dir("llama")


def test_moxin_recipe_names_it() -> None:
    from steelforge.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "moxin-7b" / "pretrain.yaml")
    assert recipe.tokenizer == tm.MISTRAL_NAME
    assert recipe.model is not None and recipe.model.preset == "moxin-7b"
