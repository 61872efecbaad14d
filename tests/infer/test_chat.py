"""`steelforge chat`: a pseudo-terminal session that streams and obeys /reset, one-shot JSONL, int8 drift."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from steelforge.errors import SteelforgeError
from steelforge.infer.chat import ChatSession, Sampling, one_shot, read_prompts_file
from steelforge.infer.generation import load_for_inference, quantization_drift, quantize_int8

pytestmark = pytest.mark.timeout(240)
GREEDY = Sampling(max_new_tokens=8, temperature=0.0)
# A simple Tülu-style template for the template-less mistral-v1 tokenizer.
SIMPLE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_chat_in_a_pseudo_terminal_streams_and_resets(steel_dir: Path, tmp_path: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    loaded = load_for_inference(steel_dir)
    expected = ChatSession(loaded, GREEDY).reply("hello")  # what the first turn must print
    assert expected

    child = pexpect.spawn(
        sys.executable, ["-m", "steelforge.cli", "chat", str(steel_dir), "--temperature", "0", "--max-new-tokens", "8"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, encoding="utf-8", timeout=120, cwd=str(tmp_path),
    )
    try:
        child.expect_exact("you> ")

        def turn(text: str) -> str:
            child.sendline(text)
            child.expect_exact("bot> ")
            child.expect_exact("you> ")
            return child.before.replace("\r", "").strip("\n")

        first = turn("hello")
        assert first == expected.strip("\n") or first.strip() == expected.strip()
        second = turn("and then?")
        child.sendline(f"/save {tmp_path / 'two.json'}")
        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect_exact("[conversation reset]")
        child.expect_exact("you> ")
        again = turn("hello")
        child.sendline(f"/save {tmp_path / 'one.json'}")
        child.expect_exact("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert again == first  # greedy and the history forgotten: the same answer as the first turn
    assert second is not None
    two = json.loads((tmp_path / "two.json").read_text())["messages"]
    one = json.loads((tmp_path / "one.json").read_text())["messages"]
    assert [m["role"] for m in two] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in one] == ["hello", expected]
    assert child.exitstatus == 0


def test_reply_streams_piece_by_piece_and_system_prompt_is_used(steel_dir: Path) -> None:
    loaded = load_for_inference(steel_dir)
    pieces: list[str] = []
    session = ChatSession(loaded, Sampling(max_new_tokens=10, temperature=0.0))
    answer = session.reply("tell me", on_text=pieces.append)
    assert len(pieces) >= 3 and "".join(pieces) == answer
    session.set_system("You are terse.")
    assert session.messages == [{"role": "system", "content": "You are terse."}]
    session.reply("tell me")
    text = loaded.tokenizer.decode(
        loaded.tokenizer.apply_chat_template(session.messages[:2], add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
    )
    assert "You are terse." in text and "You are a helpful assistant." not in text


def test_one_shot_batch_matches_single_prompts(steel_dir: Path) -> None:
    loaded = load_for_inference(steel_dir)
    prompts = ["hi", "What is the capital of France? Answer in one word please.", "1+1="]
    batched = one_shot(loaded, prompts, GREEDY)
    singles = [one_shot(loaded, [p], GREEDY)[0] for p in prompts]
    assert [r["answer"] for r in batched] == [r["answer"] for r in singles]
    assert all(r["finish_reason"] in ("stop", "length") and r["completion_tokens"] <= 8 for r in batched)


def test_cli_prompts_file_to_jsonl_with_moxin_template(moxin_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steelforge.cli import app

    (tmp_path / "p.jsonl").write_text('{"prompt": "Bonjour"}\nplain text prompt\n')
    (tmp_path / "t.jinja").write_text(SIMPLE_TEMPLATE)
    args = ["chat", str(moxin_dir), "--prompts-file", str(tmp_path / "p.jsonl"), "-o", str(tmp_path / "a.jsonl"),
            "--temperature", "0", "--max-new-tokens", "5", "--chat-template", str(tmp_path / "t.jinja")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["Bonjour", "plain text prompt"]
    assert all(isinstance(r["answer"], str) and 1 <= r["completion_tokens"] <= 5 for r in records)
    refused = CliRunner().invoke(app, ["chat", str(moxin_dir), "-p", "x"])
    assert isinstance(refused.exception, SteelforgeError) and "no chat template" in str(refused.exception)
    loaded = load_for_inference(moxin_dir)
    assert loaded.stop_token_ids == [2] and loaded.chat_template is None
    with pytest.raises(SteelforgeError, match="no chat template"):
        one_shot(loaded, ["x"], GREEDY)
    raw = one_shot(loaded, ["The city of"], GREEDY, raw=True)
    assert raw[0]["prompt_tokens"] == len(loaded.tokenizer("The city of").input_ids)


def test_prompts_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SteelforgeError, match="does not exist"):
        read_prompts_file(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(SteelforgeError, match="no 'prompt' field"):
        read_prompts_file(tmp_path / "bad.jsonl")


# The fixed prompt set of the int8 drift measurement (docs/chat_serve.md reports its numbers).
DRIFT_PROMPTS = ["The city of Paris is", "小明有3个苹果，", "def fibonacci(n):", "Question: what is 7 times 8?"]


def test_int8_quantisation_drift_is_measured_and_small(steel_dir: Path) -> None:
    loaded = load_for_inference(steel_dir)
    ids = [loaded.tokenizer(p).input_ids for p in DRIFT_PROMPTS]
    same = quantization_drift(loaded.model, loaded.model, ids)
    assert same["top1_agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-6)
    q = quantize_int8(loaded.model)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    drift = quantization_drift(loaded.model, q, ids)
    assert drift["positions"] == sum(len(i) for i in ids)
    assert 0.0 < drift["kl"] < 0.05 and drift["top1_agreement"] >= 0.8
    int8 = load_for_inference(steel_dir, int8=True)
    assert one_shot(int8, ["hello"], GREEDY)[0]["completion_tokens"] >= 1


def test_pty_answer_arrives_in_pieces(steel_dir: Path, tmp_path: Path) -> None:
    """Streaming as a terminal user sees it: the answer reaches the pty in several reads, not all at the end."""
    pexpect = pytest.importorskip("pexpect")
    expected = ChatSession(load_for_inference(steel_dir), Sampling(max_new_tokens=48, temperature=0.0)).reply("hello")
    child = pexpect.spawn(
        sys.executable, ["-m", "steelforge.cli", "chat", str(steel_dir), "--temperature", "0", "--max-new-tokens", "48"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, encoding="utf-8", timeout=120, cwd=str(tmp_path),
    )
    try:
        child.expect_exact("you> ")
        child.sendline("hello")
        child.expect_exact("bot> ")
        reads: list[str] = [child.buffer]  # whatever arrived with "bot> " in the same read
        while "you> " not in "".join(reads):
            reads.append(child.read_nonblocking(size=4096, timeout=60))
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    shown = "".join(reads).split("you> ")[0].replace("\r", "")
    assert shown == expected + "\n"  # the answer, then the newline the loop prints after it
    assert len([r for r in reads if r]) >= 2
