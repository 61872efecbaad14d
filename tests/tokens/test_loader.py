"""`TokenLoader`: exact resume (also mid-accumulation), world-size changes, workers, appends, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steelforge.errors import DataError
from steelforge.tokens.loader import TokenLoader, position_ids_for
from steelforge.tokens.pack import write_token_store
from steelforge.tokens.sampler import Phase
from steelforge.tokens.store import TokenStore, append_shards

SEP = 1
MIX = {"zh": 0.75, "en": 0.25}


def _write(
    path: Path, seed: int, n_docs: int = 60, sources: tuple[str, ...] = ("zh", "zh", "zh", "en")
) -> Path:
    rng = np.random.default_rng(seed)
    docs = [
        (sources[i % len(sources)], np.append(rng.integers(2, 30_000, int(rng.integers(3, 40))), SEP))
        for i in range(n_docs)
    ]
    write_token_store(
        path,
        docs,
        tokenizer_name="tiny",
        tokenizer_fingerprint="fp",
        separator_token="<sep>",
        separator_id=SEP,
        shard_tokens=128,
    )
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("loader") / "store", seed=0)


def _loader(store: Path | list[Path], **kw) -> TokenLoader:
    args = {"seq_len": 8, "micro_batch_size": 2, "grad_accum": 3, "seed": 11, "mixture": MIX}
    args.update(kw)
    return TokenLoader(store, **args)


def _take(loader: TokenLoader, n: int) -> list[dict[str, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _ids(batches: list[dict[str, torch.Tensor]]) -> list[list[list[int]]]:
    return [b["input_ids"].tolist() for b in batches]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(0, 40))
def test_resume_at_any_micro_batch_continues_the_same_stream(store: Path, stop: int) -> None:
    expected = _take(_loader(store), stop + 8)[stop:]
    first = _loader(store)
    _take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    assert len(json.dumps(state)) < 2000
    resumed = _loader(store)
    resumed.load_state_dict(state)
    got = _take(resumed, 8)
    assert _ids(got) == _ids(expected)
    assert [b["labels"].tolist() for b in got] == [b["labels"].tolist() for b in expected]


def test_batches_are_next_token_pairs_from_the_store(store: Path) -> None:
    streams = {
        s: np.concatenate([np.asarray(TokenStore(store).tokens(x)) for x in shards])
        for s, shards in TokenStore(store).sources().items()
    }
    windows = {s: {tuple(v[i : i + 9].tolist()) for i in range(0, len(v) - 8, 8)} for s, v in streams.items()}
    for batch in _take(_loader(store), 12):
        assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2, 8)
        for x, y in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
            assert x[1:] == y[:-1]
            assert any((*x, y[-1]) in w for w in windows.values())


def _global_stream(
    store: Path, world_size: int, steps: int, state: dict | None = None, micro: int = 2, accum: int = 3
) -> tuple[list[list[int]], list[dict]]:
    """Rank 0..W-1's micro-batches of each step, concatenated in rank order = the global batches."""
    loaders = [
        _loader(store, rank=r, world_size=world_size, micro_batch_size=micro, grad_accum=accum)
        for r in range(world_size)
    ]
    if state is not None:
        for ld in loaders:
            ld.load_state_dict(state)
    iters = [iter(ld) for ld in loaders]
    rows = []
    for _ in range(steps):
        for it in iters:
            for _ in range(accum):
                rows += next(it)["input_ids"].tolist()
    return rows, [ld.state_dict() for ld in loaders]


def test_world_size_two_to_one_and_one_to_two_continue_the_same_global_sequence(store: Path) -> None:
    single, _ = _global_stream(store, 1, 8, micro=2, accum=6)
    double, states = _global_stream(store, 2, 8, micro=2, accum=3)
    assert double == single
    assert states[0] == states[1]  # the state is rank-independent
    # 2 -> 1 and 1 -> 2 after 3 steps (same global batch of 12 samples)
    _, states2 = _global_stream(store, 2, 3, micro=2, accum=3)
    rest1, _ = _global_stream(store, 1, 5, state=states2[0], micro=2, accum=6)
    assert rest1 == single[3 * 12 :]
    _, states1 = _global_stream(store, 1, 3, micro=2, accum=6)
    rest2, _ = _global_stream(store, 2, 5, state=states1[0], micro=2, accum=3)
    assert rest2 == single[3 * 12 :]


def test_mid_accumulation_state_refuses_another_world_size(store: Path) -> None:
    loader = _loader(store, world_size=2, rank=1)
    _take(loader, 1)
    other = _loader(store, world_size=1)
    with pytest.raises(DataError, match="mid-accumulation"):
        other.load_state_dict(loader.state_dict())


def test_two_worker_processes_give_the_same_batches_and_state(store: Path) -> None:
    plain = _loader(store, return_position_ids=True)
    _take(plain, 4)
    state = plain.state_dict()
    expected = _take(plain, 7)
    workers = _loader(store, return_position_ids=True, num_workers=2, pin_memory=True)
    workers.load_state_dict(state)
    got = _take(workers, 7)  # the workers prefetch beyond these 7
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])
    assert workers.state_dict() == plain.state_dict()


def test_position_ids_restart_at_every_document(store: Path) -> None:
    assert position_ids_for(8, np.array([3, 6])).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    for batch in _take(_loader(store, return_position_ids=True), 6):
        for ids, pos in zip(batch["input_ids"].tolist(), batch["position_ids"].tolist(), strict=True):
            for j in range(1, 8):
                # a document starts right after a separator token
                assert pos[j] == (0 if ids[j - 1] == SEP else pos[j - 1] + 1)


def test_appended_shards_join_mid_epoch_without_loss_or_repeat(tmp_path: Path) -> None:
    main = _write(tmp_path / "main", seed=0, sources=("web",))
    extra = _write(tmp_path / "extra", seed=1, sources=("web",))
    kw = {"mixture": None, "grad_accum": 3, "micro_batch_size": 1, "seq_len": 4}
    loader = _loader(main, **kw)
    n_before = (TokenStore(main).source_stats()["web"]["tokens"] - 1) // 4
    first = _take(loader, 20)
    state = loader.state_dict()
    assert state["micro"] == 2  # mid-accumulation: the step is finished in the old order
    step_rest = _take(loader, 1)[0]["input_ids"]
    append_shards(main, [extra])
    n_after = (TokenStore(main).source_stats()["web"]["tokens"] - 1) // 4
    resumed = _loader(main, **kw)
    resumed.load_state_dict(state)
    rest = _take(resumed, n_after - 20)
    assert torch.equal(rest[0]["input_ids"], step_rest)
    samples = [tuple(b["input_ids"][0].tolist() + b["labels"][0, -1:].tolist()) for b in first + rest]
    tokens = np.concatenate([np.asarray(TokenStore(main).tokens(s)) for s in TokenStore(main).shards])
    everything = [tuple(tokens[i * 4 : i * 4 + 5].tolist()) for i in range(n_after)]
    assert n_after > n_before + 50
    assert sorted(samples) == sorted(everything)


def test_phases_change_seq_len_at_the_step_boundary(store: Path) -> None:
    loader = _loader(store, phases=[Phase(2 * 6 * 8, 8), Phase(None, 16)], grad_accum=3)
    assert loader.current_seq_len == 8 and loader.tokens_per_step == 6 * 8
    shapes = [tuple(b["input_ids"].shape) for b in _take(loader, 9)]
    assert shapes == [(2, 8)] * 6 + [(2, 16)] * 3
    assert loader.current_seq_len == 16 and loader.tokens_per_step == 6 * 16


def test_phases_have_one_shape_and_seq_len_reads_no_sampler(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"not a steelforge\.tokens\.sampler\.Phase"):
        _loader(store, phases=[(96, 8), (None, 16)])
    with pytest.raises(DataError, match=r"not a steelforge\.tokens\.sampler\.Phase"):
        _loader(store, phases=[{"until_tokens": None, "seq_len": 8}])
    loader = _loader(store, phases=[Phase(2 * 6 * 8, 8), Phase(None, 16)], grad_accum=3)
    _take(loader, 6)

    def no_sampler(*args, **kwargs):
        raise AssertionError("current_seq_len built a sampler")

    monkeypatch.setattr(loader, "_new_sampler", no_sampler)
    assert loader.current_seq_len == 16 and loader.tokens_per_step == 6 * 16


def test_bad_inputs_fail_before_training(store: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tokenizer"):
        _loader(store, tokenizer_fingerprint="another-tokenizer")
    with pytest.raises(DataError, match="sum to"):
        _loader(store, mixture={"zh": 0.5, "en": 0.6})
    with pytest.raises(DataError, match="larger than source"):
        _loader(store, seq_len=100_000)
    with pytest.raises(DataError, match="strictly increasing"):
        _loader(store, phases=[Phase(1000, 8), Phase(500, 16)])
    with pytest.raises(DataError, match="not a token store"):
        _loader(tmp_path)
    # a shard changed between checkpoint and resume (same size): the md5 check on resume names it
    copy = _write(tmp_path / "copy", seed=0)
    loader = _loader(copy)
    _take(loader, 3)
    state = loader.state_dict()
    changed = dict(state, stores=[[state["stores"][0][0], "0" * 32]])  # the checkpoint saw other shards
    with pytest.raises(DataError, match="differs from the one in the checkpoint"):
        _loader(copy).load_state_dict(changed)
    # shards appended since the checkpoint: the store is re-hashed, and a corrupted old shard is named
    append_shards(copy, [_write(tmp_path / "more", seed=5)])
    shard = TokenStore(copy).shards[0]
    data = bytearray((copy / shard.file).read_bytes())
    data[0] ^= 0x01
    (copy / shard.file).write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"fails verification: shard '{shard.file}' md5 differs"):
        _loader(copy).load_state_dict(state)


def test_several_stores_are_mixed_by_folder_name(tmp_path: Path) -> None:
    web = _write(tmp_path / "web", seed=3, sources=("a", "b"))
    code = _write(tmp_path / "code", seed=4, sources=("c",))
    loader = _loader([web, code], mixture={"web": 0.5, "code": 0.5}, micro_batch_size=4, grad_accum=1)
    code_tokens = {int(t) for s in TokenStore(code).shards for t in TokenStore(code).tokens(s)}
    web_tokens = {int(t) for s in TokenStore(web).shards for t in TokenStore(web).tokens(s)}
    for batch in _take(loader, 5):
        from_code = [set(row) <= code_tokens for row in batch["input_ids"].tolist()]
        from_web = [set(row) <= web_tokens for row in batch["input_ids"].tolist()]
        assert sum(from_code) >= 2 and sum(from_web) >= 2  # 2 + 2 of every 4 (random ids barely overlap)
    twin = _write(tmp_path / "other" / "web", seed=5)
    with pytest.raises(DataError, match="both named 'web'"):
        _loader([web, twin], mixture=None)
