"""Chat data: readers, the exact assistant mask (ChatML, Tülu), bad input accounting, epochs and packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.posttrain.chat_data import (
    IGNORE,
    SFTLoader,
    conversation,
    epoch_selection,
    pack_rows,
    preference,
    prepare_pairs,
    prepare_sft,
)  # fmt: skip
from steelforge.posttrain.config import ChatDataset
from steelforge.posttrain.templates import TEMPLATES, apply_template, assistant_spans, tokenize_with_mask
from steelforge.train.pretrain import final_hidden

from ._chat_helpers import char_tokenizer, sft_records, split_task, write_jsonl

CONVERSATION = [
    {"role": "system", "content": "You are Steel, a small model."},
    {"role": "user", "content": "你好！1+1 等于几？"},
    {"role": "assistant", "content": "等于 2。 Two!"},
    {"role": "user", "content": "Reverse: abc"},
    {"role": "assistant", "content": " cba\n  done"},
]


@pytest.fixture(scope="module", params=[("qwen1.5", "chatml", "<|im_end|>"), ("mistral-v1", "tulu", "</s>")])
def real_tokenizer(request):
    from steelforge.tokenizers import load_tokenizer

    name, template, end = request.param
    return apply_template(load_tokenizer(name), TEMPLATES[template]), end


def test_mask_covers_exactly_the_assistant_tokens(real_tokenizer) -> None:
    """Token by token: every trained token lies inside an assistant turn (content + end token) and every
    character of those turns is covered by trained tokens; ids equal apply_chat_template's."""
    tok, end = real_tokenizer
    for messages in (CONVERSATION, CONVERSATION[1:3], CONVERSATION[1:]):
        ids, mask = tokenize_with_mask(tok, messages)
        assert ids == tok.apply_chat_template(messages, tokenize=True, return_dict=False)
        full, spans = assistant_spans(tok, messages)
        offsets = tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        expected = [m["content"] + end for m in messages if m["role"] == "assistant"]
        assert [full[s:e] for s, e in spans] == expected
        inside = np.zeros(len(full), dtype=bool)
        for s, e in spans:
            inside[s:e] = True
        covered = np.zeros(len(full), dtype=bool)
        for (s, e), m in zip(offsets, mask, strict=True):
            if m:
                assert inside[s:e].all(), f"trained token {full[s:e]!r} lies outside the assistant turns"
                covered[s:e] = True
            else:
                assert not inside[s:e].any(), f"untrained token {full[s:e]!r} overlaps an assistant turn"
        assert (covered == inside).all()
        trained = [tok.decode([i]) for i, m in zip(ids, mask, strict=True) if m]
        assert "".join(trained).replace(" ", "") == "".join(expected).replace(" ", "")


def test_readers_normalise_every_format() -> None:
    want = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert conversation({"messages": want}) == want
    assert conversation({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) == want
    assert conversation({"instruction": "q", "output": "a"}) == want
    assert conversation({"instruction": "q", "input": "x", "output": "a"})[0]["content"] == "q\n\nx"
    prompt, chosen, rejected = preference({"prompt": "q", "chosen": "a", "rejected": "b"})
    assert prompt == want[:1] and chosen == want[1:] and rejected == [{"role": "assistant", "content": "b"}]
    prompt, chosen, _ = preference({"chosen": want, "rejected": [want[0], {"role": "assistant", "content": "b"}]})
    assert prompt == want[:1] and chosen == want[1:]


def test_bad_input_is_counted_with_file_and_line(tmp_path: Path) -> None:
    tok = apply_template(__import__("transformers").AutoTokenizer.from_pretrained(char_tokenizer(tmp_path / "t")),
                         TEMPLATES["tulu"])  # fmt: skip
    good = {"messages": [{"role": "user", "content": "repeat 12"}, {"role": "assistant", "content": "12"}]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "user", "content": "x" * 80}, {"role": "assistant", "content": "y"}]}),
        "[1, 2]",
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    datasets = [ChatDataset(path=path), ChatDataset(path=empty)]
    data = prepare_sft(datasets, tok, "fp", "tpl", tmp_path / "drop", cutoff_len=40, overflow="drop")
    assert len(data) == 1
    assert data.stats["bad_by_kind"] == {"malformed line": 2, "unknown role": 1, "no assistant turn": 1,
                                         "over cutoff_len (dropped)": 1, "empty file": 1}  # fmt: skip
    errors = [json.loads(x) for x in (tmp_path / "drop" / "errors.jsonl").read_text().splitlines()]
    assert {(Path(e["file"]).name, e["line"]) for e in errors} == {
        ("chat.jsonl", 2), ("chat.jsonl", 3), ("chat.jsonl", 4), ("chat.jsonl", 5), ("chat.jsonl", 6), ("empty.jsonl", 0)
    }
    kept = prepare_sft(datasets, tok, "fp", "tpl", tmp_path / "trunc", cutoff_len=40, overflow="truncate")
    assert len(kept) == 1 and kept.stats["bad_by_kind"]["no trained token after truncation"] == 1

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": "repeat 1", "chosen": "1", "rejected": "1"}, {"prompt": "repeat 2", "chosen": "2",
                                                                                   "rejected": "3"}])  # fmt: skip
    pdata = prepare_pairs([ChatDataset(path=pairs)], tok, "fp", "tpl", tmp_path / "pairs", cutoff_len=64,
                          overflow="truncate", max_prompt_len=None)  # fmt: skip
    assert len(pdata) == 1 and pdata.stats["bad_by_kind"] == {"chosen equals rejected": 1}


def test_prepared_folder_is_reused_until_inputs_change(tmp_path: Path) -> None:
    tok = apply_template(__import__("transformers").AutoTokenizer.from_pretrained(char_tokenizer(tmp_path / "t")),
                         TEMPLATES["tulu"])  # fmt: skip
    path = write_jsonl(tmp_path / "a.jsonl", sft_records(split_task(20, 0)[0]))
    folder = tmp_path / "prep"
    prepare_sft([ChatDataset(path=path)], tok, "fp", "tpl", folder, cutoff_len=64, overflow="truncate")
    stamp = (folder / "prepared.json").stat().st_mtime_ns
    prepare_sft([ChatDataset(path=path)], tok, "fp", "tpl", folder, cutoff_len=64, overflow="truncate")
    assert (folder / "prepared.json").stat().st_mtime_ns == stamp
    write_jsonl(path, sft_records(split_task(21, 0)[0]))
    assert len(prepare_sft([ChatDataset(path=path)], tok, "fp", "tpl", folder, cutoff_len=64, overflow="truncate")) == 21


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4), seed=st.integers(0, 1000),
       epoch=st.integers(0, 5), capacity=st.integers(8, 64))  # fmt: skip
def test_every_conversation_once_per_epoch(sizes: list[int], seed: int, epoch: int, capacity: int) -> None:
    dataset_of = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)]).astype(np.int32)
    order = epoch_selection(dataset_of, [None] * len(sizes), seed, epoch)
    assert sorted(order.tolist()) == list(range(len(dataset_of)))
    assert order.tolist() == epoch_selection(dataset_of, [None] * len(sizes), seed, epoch).tolist()
    lengths = np.random.default_rng(seed).integers(1, 8, size=len(dataset_of))
    rows = pack_rows(order, lengths, capacity, packing=True)
    assert [i for row in rows for i in row] == order.tolist()
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows)


def test_mixture_weights_set_the_epoch_shares() -> None:
    dataset_of = np.asarray([0] * 1000 + [1] * 100, dtype=np.int32)
    order = epoch_selection(dataset_of, [0.8, 0.2], seed=1, epoch=0)
    assert len(set(order.tolist())) == len(order) == 500
    assert (dataset_of[order] == 0).sum() == 400
    other = epoch_selection(dataset_of, [0.8, 0.2], seed=1, epoch=1)
    assert set(order.tolist()) != set(other.tolist())  # a fresh subsample of the large set each epoch


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    tok = apply_template(AutoTokenizer.from_pretrained(char_tokenizer(root / "t")), TEMPLATES["tulu"])
    path = write_jsonl(root / "a.jsonl", sft_records(split_task(40, 0)[0]))
    return tok, prepare_sft([ChatDataset(path=path)], tok, "fp", "tpl", root / "prep", cutoff_len=64,
                            overflow="truncate")  # fmt: skip


def test_packing_gives_the_per_conversation_loss_of_unpacked_batches(tiny_data) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok, data = tiny_data
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).double().eval()  # fmt: skip
    packed = SFTLoader(data, micro_batch_size=1, cutoff_len=64, packing=True, pad_id=tok.pad_token_id)
    row = packed.stream.epoch_rows(0)[0]
    assert len(row) >= 3
    batch = packed.batch_at(0)
    with torch.no_grad():
        # the training path (final_hidden: use_cache=False; with a cache transformers skips packed detection)
        logits = model.lm_head(final_hidden(model, batch["input_ids"], batch["position_ids"]))[0]
        per_token = torch.nn.functional.cross_entropy(logits, batch["labels"][0], ignore_index=IGNORE, reduction="none")
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
        for k, conv in enumerate(row):
            ids = torch.as_tensor(data.ids[conv], dtype=torch.long)[None]
            labels = torch.full_like(ids, IGNORE)
            mask = torch.as_tensor(data.mask[conv])
            labels[0, :-1] = torch.where(mask[1:] > 0, ids[0, 1:], IGNORE)
            alone = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0], labels[0], ignore_index=IGNORE,
                                                      reduction="sum")  # fmt: skip
            together = per_token[starts[k] : starts[k] + ids.shape[1]].sum()
            torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-9)


def test_loader_resumes_and_ranks_split_the_single_process_rows(tiny_data) -> None:
    tok, data = tiny_data
    kw = dict(cutoff_len=64, packing=True, pad_id=tok.pad_token_id, seed=3, epochs=2.0)
    one = SFTLoader(data, micro_batch_size=4, **kw)
    it = iter(one)
    first = [next(it) for _ in range(3)]
    state = one.state_dict()
    after = next(it)
    again = SFTLoader(data, micro_batch_size=4, **kw)
    again.load_state_dict(state)
    torch.testing.assert_close(next(iter(again))["input_ids"], after["input_ids"])
    ranks = [SFTLoader(data, micro_batch_size=2, rank=r, world_size=2, **kw) for r in range(2)]
    for step in range(3):
        rows = [ranks[r].batch_at(step * 4)["input_ids"] for r in range(2)]
        ref = first[step]["input_ids"]
        for r, part in enumerate(rows):
            got, want = part, ref[2 * r : 2 * r + 2]
            width = max(got.shape[1], want.shape[1])
            pad = tok.pad_token_id
            got = torch.nn.functional.pad(got, (0, width - got.shape[1]), value=pad)
            want = torch.nn.functional.pad(want, (0, width - want.shape[1]), value=pad)
            torch.testing.assert_close(got, want)
