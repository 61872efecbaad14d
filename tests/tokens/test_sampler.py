"""The global sample order: permutations, epochs, appends, mixtures, phases, resume, state size."""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.errors import DataError
from steelforge.tokens.sampler import FeistelPermutation, GlobalSampler, Phase, SourceOrder

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(n=st.integers(1, 3000), key=st.integers(0, 2**64 - 1))
def test_feistel_is_a_bijection(n: int, key: int) -> None:
    perm = FeistelPermutation(n, key)
    assert sorted(perm(i) for i in range(n)) == list(range(n))


def test_feistel_depends_on_key_and_is_not_identity() -> None:
    a = [FeistelPermutation(1000, 1)(i) for i in range(1000)]
    b = [FeistelPermutation(1000, 2)(i) for i in range(1000)]
    assert a != b
    assert a != list(range(1000))
    assert sum(x == i for i, x in enumerate(a)) < 20  # few fixed points, as for a random permutation


@FAST
@given(n=st.integers(1, 400), key=st.integers(0, 2**32))
def test_each_epoch_visits_every_sample_once(n: int, key: int) -> None:
    order = SourceOrder("s", n, key)
    first = [order.next() for _ in range(n)]
    second = [order.next() for _ in range(n)]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert order.epoch == 2 and order.cursor == 0
    if n > 8:
        assert first != second  # a new permutation per epoch


@FAST
@given(
    n=st.integers(1, 300),
    appends=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 200)), max_size=4),
    key=st.integers(0, 2**32),
)
def test_appends_keep_every_sample_exactly_once_per_epoch(
    n: int, appends: list[tuple[float, int]], key: int
) -> None:
    """Appends mid-epoch: the rest of the epoch plus the new samples, nothing lost or repeated."""
    order = SourceOrder("s", n, key)
    seen: list[int] = []
    total = n
    for fraction, extra in appends:
        steps = int(fraction * (total - order.cursor - 1)) if total - order.cursor > 1 else 0
        seen += [order.next() for _ in range(steps)]
        total += extra
        order.grow(total)
    seen += [order.next() for _ in range(total - len(seen))]
    assert sorted(seen) == list(range(total))
    assert order.epoch == 1 and order.cursor == 0
    # the state stays a few integers per segment, and restoring it reproduces the order
    state = order.state_dict()
    assert len(state["segments"]) == 1


def test_append_resume_reproduces_the_same_order() -> None:
    order = SourceOrder("s", 100, 7)
    head = [order.next() for _ in range(30)]
    order.grow(150)
    state = json.loads(json.dumps(order.state_dict()))
    rest = [order.next() for _ in range(120)]
    restored = SourceOrder.from_state("s", 7, state)
    assert [restored.next() for _ in range(120)] == rest
    assert sorted(head + rest) == list(range(150))


def test_shrinking_source_is_refused() -> None:
    order = SourceOrder("s", 100, 7)
    with pytest.raises(DataError, match="shrank"):
        order.grow(50)


def _drain(sampler: GlobalSampler, steps: int) -> list[list[tuple[str, int]]]:
    return [sampler.next_batch() for _ in range(steps)]


@FAST
@given(
    raw=st.lists(st.integers(0, 10), min_size=1, max_size=5).filter(lambda r: sum(r) > 0),
    batch=st.integers(1, 30),
)
def test_mixture_counts_never_drift_by_a_whole_sample(raw: list[int], batch: int) -> None:
    names = [f"s{i}" for i in range(len(raw))]
    weights = {n: r / sum(raw) for n, r in zip(names, raw, strict=True)}
    sampler = GlobalSampler(
        {n: 10_000 for n in names}, global_batch_size=batch, phases=[Phase(None, 4, weights)]
    )
    counts: Counter[str] = Counter()
    drawn = 0
    for global_batch in _drain(sampler, 12):
        for source, _ in global_batch:
            counts[source] += 1
            drawn += 1
            for n in names:
                assert abs(counts[n] - drawn * weights[n]) < 1


def test_mixture_is_exact_over_every_window_of_global_batches() -> None:
    weights = {"zh": 0.8, "en": 0.2}
    sampler = GlobalSampler(
        {"zh": 50_000, "en": 9_000}, global_batch_size=10, phases=[Phase(None, 8, weights)]
    )
    for global_batch in _drain(sampler, 200):
        assert Counter(s for s, _ in global_batch) == {"zh": 8, "en": 2}
    sampler = GlobalSampler(
        {"zh": 50_000, "en": 9_000, "code": 9_000},
        global_batch_size=20,
        phases=[Phase(None, 8, {"zh": 0.6, "en": 0.25, "code": 0.15})],
    )
    for global_batch in _drain(sampler, 100):
        assert Counter(s for s, _ in global_batch) == {"zh": 12, "en": 5, "code": 3}


def test_epochs_are_counted_per_source() -> None:
    # en (9 samples) runs out long before zh (99): en starts its second epoch, zh is still in its first
    sampler = GlobalSampler(
        {"zh": 100, "en": 10}, global_batch_size=4, phases=[Phase(None, 1, {"zh": 0.5, "en": 0.5})]
    )
    _drain(sampler, 6)  # 12 en samples
    state = sampler.state_dict()["sources"]
    assert state["en"]["epoch"] == 1 and state["en"]["cursor"] == 3
    assert state["zh"]["epoch"] == 0 and state["zh"]["cursor"] == 12


@FAST
@given(stop=st.integers(0, 40), seed=st.integers(0, 5))
def test_resume_gives_the_stream_that_would_have_followed(stop: int, seed: int) -> None:
    def make() -> GlobalSampler:
        phases = [Phase(400, 4, {"a": 0.5, "b": 0.5}), Phase(None, 8, {"a": 0.25, "b": 0.75})]
        return GlobalSampler({"a": 301, "b": 777}, global_batch_size=4, phases=phases, seed=seed)

    reference = make()
    expected = _drain(reference, stop + 20)[stop:]
    first = make()
    _drain(first, stop)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    assert _drain(resumed, 20) == expected


def test_phases_switch_at_exact_token_counts() -> None:
    # 2k -> 4k context -> capability mix, scaled down: 4 samples per step
    phases = [
        Phase(4 * 16 * 3, 16, None),
        Phase(4 * 16 * 3 + 4 * 32 * 2, 32, None),
        Phase(None, 32, {"cap": 1.0}),
    ]
    sampler = GlobalSampler({"web": 10_000, "cap": 5_000}, global_batch_size=4, phases=phases)
    seen = []
    for _ in range(7):
        seq_len = sampler.peek_seq_len()
        batch = sampler.next_batch()
        seen.append((seq_len, sampler.phase, {s for s, _ in batch}))
    assert [s[0] for s in seen] == [16, 16, 16, 32, 32, 32, 32]
    assert [s[1] for s in seen] == [0, 0, 0, 1, 1, 2, 2]
    assert seen[-1][2] == {"cap"}
    assert sampler.tokens == 4 * 16 * 3 + 4 * 32 * 4


@pytest.mark.parametrize(
    ("phases", "mixture_sources", "match"),
    [
        ([Phase(100, 4), Phase(50, 8)], {"a": 10}, "strictly increasing"),
        ([Phase(None, 4), Phase(50, 8)], {"a": 10}, "not the last phase"),
        ([Phase(None, 4, {"a": 0.5, "b": 0.4})], {"a": 100, "b": 100}, "sum to 0.9"),
        ([Phase(None, 4, {"a": 0.5, "zz": 0.5})], {"a": 100}, "unknown source"),
        ([Phase(None, 64, {"a": 0.5, "b": 0.5})], {"a": 1000, "b": 30}, "larger than source 'b'"),
        (
            [Phase(100, 4), Phase(None, 64, {"a": 0.5, "b": 0.5})],
            {"a": 1000, "b": 30},
            "seq_len 64 is larger",
        ),
    ],
)
def test_bad_settings_are_one_clear_sentence(
    phases: list[Phase], mixture_sources: dict[str, int], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        GlobalSampler(mixture_sources, global_batch_size=2, phases=phases)


def test_state_size_does_not_depend_on_store_size() -> None:
    """A virtual source of 1e9 samples: O(1) state, no allocation proportional to its size."""
    sizes = {}
    for n_samples in (10**3, 10**9):
        tracemalloc.start()
        sampler = GlobalSampler(
            {"web": n_samples * 2048 + 1}, global_batch_size=64, phases=[Phase(None, 2048)]
        )
        batches = _drain(sampler, 20)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 2_000_000
        assert all(0 <= i < n_samples for b in batches for _, i in b)
        sizes[n_samples] = len(json.dumps(sampler.state_dict()))
    assert abs(sizes[10**9] - sizes[10**3]) <= 40  # only the digits of a few integers differ


def test_resume_with_appended_tokens_keeps_the_epoch_exact() -> None:
    phases = [Phase(None, 4)]
    sampler = GlobalSampler({"a": 401}, global_batch_size=5, phases=phases, seed=3)
    seen = [i for b in _drain(sampler, 8) for _, i in b]
    state = sampler.state_dict()
    grown = GlobalSampler({"a": 801}, global_batch_size=5, phases=phases, seed=3)
    grown.load_state_dict(state)
    seen += [i for b in _drain(grown, 32) for _, i in b]
    assert sorted(seen) == list(range(200))
    assert grown.state_dict()["sources"]["a"]["epoch"] == 1


@FAST
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    batch=st.integers(1, 7),
    append=st.tuples(st.integers(0, 3), st.integers(0, 80), st.floats(0, 0.9)),
    seed=st.integers(0, 9),
)
def test_one_global_epoch_covers_every_sample_of_every_source_once(
    sizes: list[int], batch: int, append: tuple[int, int, float], seed: int
) -> None:
    """Proportional mixture: one pass over all samples is each sample exactly once, also when a
    source grows mid-epoch (resumed from a state, as after `store append`)."""
    seq_len = 4
    tokens = {f"s{i}": n * seq_len + 1 for i, n in enumerate(sizes)}
    sampler = GlobalSampler(tokens, global_batch_size=1, phases=[Phase(None, seq_len)], seed=seed)
    total = sum(sizes)
    head = [sampler.next_batch()[0] for _ in range(int(append[2] * total))]
    in_step = len({src["epoch"] for src in sampler.state_dict()["sources"].values()}) == 1
    grown = dict(tokens)
    which = f"s{append[0] % len(sizes)}"
    grown[which] += append[1] * seq_len
    resumed = GlobalSampler(grown, global_batch_size=1, phases=[Phase(None, seq_len)], seed=seed)
    resumed.load_state_dict(sampler.state_dict())
    new_total = sum((t - 1) // seq_len for t in grown.values())
    expected = sorted((s, i) for s, t in grown.items() for i in range((t - 1) // seq_len))
    if in_step:  # no source had rolled over early: the rest of the pass is every remaining sample once
        rest = [resumed.next_batch()[0] for _ in range(new_total - len(head))]
        assert sorted(head + rest) == expected
    else:  # a source that finished early takes its new samples in its next epoch; the others catch up
        for _ in range(new_total):
            sources = resumed.state_dict()["sources"].values()
            if all(src["cursor"] == 0 for src in sources) and len({src["epoch"] for src in sources}) == 1:
                break
            resumed.next_batch()
    # every source's epoch ends together, then each pass is every sample exactly once
    state = resumed.state_dict()
    assert all(src["cursor"] == 0 for src in state["sources"].values())
    assert len({src["epoch"] for src in state["sources"].values()}) == 1
    second = [resumed.next_batch()[0] for _ in range(new_total)]
    assert sorted(second) == expected
    del batch


def test_a_new_source_joins_the_current_epoch_under_proportional_weights() -> None:
    sampler = GlobalSampler({"a": 41}, global_batch_size=4, phases=[Phase(None, 4)])
    _drain(sampler, 7)  # 28 samples: a is in its third epoch (10 samples each)
    resumed = GlobalSampler({"a": 41, "b": 21}, global_batch_size=4, phases=[Phase(None, 4)])
    resumed.load_state_dict(sampler.state_dict())
    rest = [x for b in _drain(resumed, 3) for x in b]  # a: 2 left in its epoch, b: 5 new
    assert Counter(s for s, _ in rest[:7]) == {"a": 2, "b": 5}
    state = resumed.state_dict()["sources"]
    assert state["a"]["epoch"] == state["b"]["epoch"] == 3
