"""One deterministic global order of training samples, resumable from a few integers.

A *sample* is `seq_len + 1` consecutive tokens of one source's token stream (documents packed
across boundaries, as Steel-LLM and TinyLlama do): sample `i` of a source covers tokens
`[i * seq_len, i * seq_len + seq_len + 1)`, so a source of `T` tokens holds `(T - 1) // seq_len`
samples and consecutive samples share one token (the label of one is the input of the next).

The order is a function of (seed, source sizes, appends, mixture, phase) only:

* **Per source**, an epoch visits every sample once in the order of a keyed pseudo-random
  permutation (`FeistelPermutation`: a Feistel network with cycle-walking, a bijection over
  `[0, N)` that needs no index array). Epochs are counted per source.
* **Appends** add a `Segment` at the current cursor: the untrained remainder of the epoch and the
  new samples are reshuffled together by a fresh permutation over the "remaining" set, so within
  the epoch no sample is lost or repeated. A lookup walks back through the segments (a handful).
* **Mixtures** pick the source of each global sample deterministically (Tijdeman's algorithm
  over exact rational weights): after any `k` samples each source has had `k * w` of them within
  less than one, hence exactly `k * w` whenever that is an integer (8/2 of every 10 for 80/20).
  Without weights, sources are weighted by their sample counts, so one pass over all samples
  visits each exactly once; after an append the rest of that pass is weighted by what is left of
  each source's epoch, so the pass still ends together for every source.
* **Phases** `(until_tokens, seq_len, mixture)` switch at the first optimizer-step boundary at or
  after `until_tokens` consumed tokens (exactly there when it is a multiple of the step's tokens);
  a new phase starts fresh epochs of every source at its own `seq_len`.

The state (`GlobalSampler.state_dict`) is a few integers per source and segment, JSON-serialisable,
and independent of the store size and of the number of ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from steelforge.errors import DataError

_MASK64 = (1 << 64) - 1
STATE_VERSION = 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a fast, well-distributed 64-bit mixing function (Feistel round)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_key(*parts: Any) -> int:
    """A 64-bit key from any printable parts (seed, phase, source, epoch, segment)."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


class FeistelPermutation:
    """A keyed bijection of `[0, n)`: a balanced Feistel network on the smallest even number of
    bits covering `n`, with cycle-walking (re-encrypt until the value falls below `n`; the domain
    is < 4n, so a few rounds on average). O(1) memory, whatever `n` is."""

    ROUNDS = 6

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError(f"a permutation needs at least one element, got n={n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self._half = bits // 2
        self._mask = (1 << self._half) - 1
        self._keys = tuple(_mix64((key + 0x9E3779B97F4A7C15 * (r + 1)) & _MASK64) for r in range(self.ROUNDS))

    def __len__(self) -> int:
        return self.n

    def _encrypt(self, x: int) -> int:
        half, mask = self._half, self._mask
        left, right = x >> half, x & mask
        for k in self._keys:
            left, right = right, left ^ (_mix64(right ^ k) & mask)
        return (left << half) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} outside [0, {self.n})")
        x = self._encrypt(i)
        while x >= self.n:
            x = self._encrypt(x)
        return x


@dataclass
class Segment:
    """Positions `[start, total)` of an epoch, ordered by one permutation of the remaining set:
    the previous segment's positions `[start, previous.total)` followed by new indices
    `[previous.total, total)`."""

    start: int
    total: int


class SourceOrder:
    """The epoch order of one source's samples, with a cursor, epochs and append segments."""

    def __init__(
        self,
        name: str,
        n_samples: int,
        key: int,
        epoch: int = 0,
        cursor: int = 0,
        segments: list[Segment] | None = None,
    ) -> None:
        self.name = name
        self.key = key
        self.epoch = epoch
        self.cursor = cursor
        self.segments = segments if segments is not None else [Segment(0, n_samples)]
        self._perms: dict[int, FeistelPermutation] = {}

    @property
    def n_samples(self) -> int:
        return self.segments[-1].total

    def _perm(self, s: int) -> FeistelPermutation:
        perm = self._perms.get(s)
        if perm is None:
            seg = self.segments[s]
            perm = self._perms[s] = FeistelPermutation(
                seg.total - seg.start, derive_key(self.key, self.epoch, s)
            )
        return perm

    def sample_at(self, position: int) -> int:
        """The sample index at `position` of the current epoch."""
        s = len(self.segments) - 1
        while self.segments[s].start > position:
            s -= 1
        while True:
            seg = self.segments[s]
            m = self._perm(s)(position - seg.start)
            if s == 0:
                return m
            previous_remaining = self.segments[s - 1].total - seg.start
            if m >= previous_remaining:
                return self.segments[s - 1].total + (m - previous_remaining)
            position, s = seg.start + m, s - 1

    def next(self, lookup: bool = True) -> int:
        """The next sample index (-1 when `lookup` is false: another rank reads it); rolls over
        into a new epoch (a new permutation) at the end."""
        index = self.sample_at(self.cursor) if lookup else -1
        self.cursor += 1
        if self.cursor >= self.n_samples:
            self.epoch += 1
            self.cursor = 0
            self.segments = [Segment(0, self.n_samples)]
            self._perms.clear()
        return index

    def grow(self, n_samples: int) -> None:
        """New samples joined (an append): reshuffle them with the rest of this epoch."""
        if n_samples < self.n_samples:
            raise DataError(
                f"source '{self.name}' shrank from {self.n_samples} to {n_samples} samples since the checkpoint; "
                "shards may only be appended, restore the removed shards"
            )
        if n_samples == self.n_samples:
            return
        if self.segments[-1].start == self.cursor:  # nothing drawn from the last segment yet: widen it
            self.segments[-1] = Segment(self.cursor, n_samples)
        else:
            self.segments.append(Segment(self.cursor, n_samples))
        self._perms.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "segments": [[s.start, s.total] for s in self.segments],
        }

    @classmethod
    def from_state(cls, name: str, key: int, state: dict[str, Any]) -> SourceOrder:
        segments = [Segment(int(a), int(b)) for a, b in state["segments"]]
        return cls(name, segments[-1].total, key, int(state["epoch"]), int(state["cursor"]), segments)


def parse_weights(
    mixture: dict[str, float], sources: list[str], where: str = "mixture"
) -> dict[str, Fraction]:
    """Validate mixture weights and turn them into exact fractions that sum to 1."""
    unknown = sorted(set(mixture) - set(sources))
    if unknown:
        raise DataError(f"{where} names unknown source(s) {unknown}; the stores hold {sorted(sources)}")
    if any(w < 0 for w in mixture.values()):
        raise DataError(f"{where} has a negative weight {mixture}; weights must be >= 0 and sum to 1")
    total = sum(mixture.values())
    if abs(total - 1.0) > 1e-6:
        raise DataError(
            f"{where} weights {mixture} sum to {total:g}, not 1; rescale them so that they sum to 1"
        )
    fractions = {s: Fraction(mixture.get(s, 0.0)).limit_denominator(10**6) for s in sources}
    norm = sum(fractions.values())
    return {s: f / norm for s, f in fractions.items()}


class MixtureSchedule:
    """Deterministic interleaving of sources by exact rational weights (Tijdeman's algorithm for
    the chairman assignment problem): after any `n` global samples, source `s` has had `drawn_s`
    with `|drawn_s - n * w_s| <= 1 - 1/(2k - 2)` < 1 for `k` sources, so whenever `n * w_s` is an
    integer the count is exactly that (e.g. 8 zh and 2 en in every 10 samples for 80/20).

    At sample `n`, among sources whose deficit `n * w_s - drawn_s` reached `delta = 1/(2k-2)`,
    pick the one whose deficit will first reach `1 - delta` (ties: the first listed)."""

    def __init__(
        self,
        weights: dict[str, Fraction],
        drawn: dict[str, int] | None = None,
        count: int = 0,
        until: int | None = None,
    ) -> None:
        self.names = list(weights)
        self.until = until  # after this many samples the owner goes back to its regular weights
        denominator = 1
        for w in weights.values():
            denominator = denominator * w.denominator // _gcd(denominator, w.denominator)
        self.denominator = denominator
        self.numerators = [int(weights[s] * denominator) for s in self.names]
        self.drawn = [int((drawn or {}).get(s, 0)) for s in self.names]
        self.count = count
        k = sum(1 for a in self.numerators if a > 0)
        self._scale = max(1, 2 * k - 2)

    def next(self) -> str:
        n, den, scale = self.count + 1, self.denominator, self._scale
        best, best_num, best_den = -1, 0, 1
        for i, a in enumerate(self.numerators):
            if a == 0:
                continue
            deficit = n * a - self.drawn[i] * den  # (n * w - drawn) * den
            if deficit * scale < den and scale > 1:
                continue  # not yet eligible: deficit < delta
            # time until the deficit reaches 1 - delta, as the fraction num / (scale * a)
            num, dnm = (scale - 1) * den - scale * deficit, scale * a
            if best < 0 or num * best_den < best_num * dnm:
                best, best_num, best_den = i, num, dnm
        self.drawn[best] += 1
        self.count += 1
        return self.names[best]

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": {s: [a, self.denominator] for s, a in zip(self.names, self.numerators, strict=True)},
            "drawn": dict(zip(self.names, self.drawn, strict=True)),
            "count": self.count,
            "until": self.until,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MixtureSchedule:
        weights = {s: Fraction(a, d) for s, (a, d) in state["weights"].items()}
        until = state.get("until")
        return cls(weights, state["drawn"], int(state["count"]), None if until is None else int(until))


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


@dataclass(frozen=True)
class Phase:
    """One training phase: until `until_tokens` consumed tokens (None: forever), at `seq_len`,
    with `mixture` weights per source (None: proportional to each source's samples)."""

    until_tokens: int | None
    seq_len: int
    mixture: dict[str, float] | None = None


def phase_seq_len(phases: Sequence[Phase], phase: int, tokens: int) -> int:
    """The seq_len of the next global batch from phase `phase` after `tokens` consumed tokens."""
    while phase + 1 < len(phases):
        until = phases[phase].until_tokens
        if until is None or tokens < until:
            break
        phase += 1
    return phases[phase].seq_len


def validate_phases(phases: list[Phase]) -> None:
    """Phases must have positive seq_len and strictly increasing `until_tokens` (None only last)."""
    if not phases:
        raise DataError("the phase list is empty; give at least one (until_tokens, seq_len, mixture) phase")
    previous = 0
    for i, phase in enumerate(phases):
        if phase.seq_len < 1:
            raise DataError(f"phase {i} has seq_len {phase.seq_len}; it must be a positive number of tokens")
        if phase.until_tokens is None:
            if i != len(phases) - 1:
                raise DataError(
                    f"phase {i} has no until_tokens but is not the last phase; give it a token count"
                )
            continue
        if phase.until_tokens <= previous:
            raise DataError(
                f"phase {i} ends at until_tokens={phase.until_tokens}, not after the previous phase's "
                f"{previous}; phases must be listed with strictly increasing until_tokens"
            )
        previous = phase.until_tokens


class GlobalSampler:
    """The global sequence of (source, sample index), one optimizer step (global batch) at a time.

    `source_tokens` maps each source to its token count (plain integers, so a virtual source of
    1e9 samples costs nothing). Rank-independent: every rank runs the same sampler and reads its
    own slice of each global batch.
    """

    def __init__(
        self, source_tokens: dict[str, int], *, global_batch_size: int, phases: list[Phase], seed: int = 0
    ) -> None:
        if global_batch_size < 1:
            raise DataError(f"global batch size {global_batch_size} must be at least 1")
        validate_phases(phases)
        for phase in phases:
            if phase.mixture is not None:
                parse_weights(phase.mixture, list(source_tokens), "phase mixture")
        self.source_tokens = dict(source_tokens)
        self.current_sizes = dict(source_tokens)  # the stores' sizes now (source_tokens: as sampled so far)
        self.global_batch_size = global_batch_size
        self.phases = list(phases)
        self.seed = seed
        self.step = 0
        self.tokens = 0
        self.phase = 0
        for index in range(len(self.phases)):  # every phase is checked before training starts
            self._weights(index)
        self._start_phase(0)

    # ---- phases ----------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return self.phases[self.phase].seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def _n_samples(self, source: str, seq_len: int) -> int:
        return max(0, (self.source_tokens[source] - 1) // seq_len)

    def _weights(self, phase_index: int | None = None) -> dict[str, Fraction]:
        index = self.phase if phase_index is None else phase_index
        phase = self.phases[index]
        names = list(self.source_tokens)
        if phase.mixture is not None:
            weights = parse_weights(phase.mixture, names, f"phase {index} mixture")
        else:
            counts = {s: self._n_samples(s, phase.seq_len) for s in names}
            total = sum(counts.values())
            if total == 0:
                raise self._too_short(max(names, key=lambda s: self.source_tokens[s]), phase.seq_len)
            weights = {s: Fraction(c, total) for s, c in counts.items()}
        for s, w in weights.items():
            if w > 0 and self._n_samples(s, phase.seq_len) == 0:
                raise self._too_short(s, phase.seq_len)
        return weights

    def _too_short(self, source: str, seq_len: int) -> DataError:
        return DataError(
            f"seq_len {seq_len} is larger than source '{source}' can supply ({self.source_tokens[source]} tokens, "
            f"a sample needs seq_len + 1 = {seq_len + 1}); lower seq_len or give that source weight 0"
        )

    def _source_key(self, source: str) -> int:
        return derive_key("steelforge-sampler", self.seed, self.phase, source)

    def _start_phase(self, phase: int) -> None:
        self.phase = phase
        self.mixture = MixtureSchedule(self._weights())
        self.orders = {
            s: SourceOrder(s, max(1, self._n_samples(s, self.seq_len)), self._source_key(s))
            for s in self.source_tokens
        }

    def _maybe_switch_phase(self) -> None:
        while self.phase + 1 < len(self.phases):
            until = self.phases[self.phase].until_tokens
            if until is None or self.tokens < until:
                return
            self._start_phase(self.phase + 1)

    # ---- appends ---------------------------------------------------------------------------------
    def update_sources(self, source_tokens: dict[str, int]) -> None:
        """Take in appended shards: grown sources reshuffle their remaining epoch with the new
        samples; a new source joins (with weight 0 under an explicit mixture)."""
        for s, tokens in source_tokens.items():
            old = self.source_tokens.get(s)
            if old is not None and tokens < old:
                raise DataError(
                    f"source '{s}' has {tokens} tokens, fewer than the {old} recorded in the checkpoint; "
                    "shards may only be appended, restore the removed shards"
                )
        missing = sorted(set(self.source_tokens) - set(source_tokens))
        if missing:
            raise DataError(
                f"source(s) {missing} recorded in the checkpoint are missing from the stores; pass every store"
            )
        if source_tokens == self.source_tokens:
            return
        self.source_tokens = dict(source_tokens)
        for s in source_tokens:
            n = self._n_samples(s, self.seq_len)
            if s in self.orders:
                if n > 0:
                    self.orders[s].grow(n)
            else:  # a new source joins the epoch the others are in
                epoch = min((o.epoch for o in self.orders.values()), default=0)
                self.orders[s] = SourceOrder(s, max(1, n), self._source_key(s), epoch=epoch)
        if self.phases[self.phase].mixture is None:
            self._mix_remaining_epoch()

    def _mix_remaining_epoch(self) -> None:
        """Proportional mixture after an append: weight each source by what is left of its epoch,
        so that the epoch still ends for every source together (each sample exactly once), then
        go back to weights proportional to the sizes."""
        active = {s: o for s, o in self.orders.items() if self._n_samples(s, self.seq_len) > 0}
        epoch = min((o.epoch for o in active.values()), default=0)
        # a source that already finished this epoch (it rolled over early) waits for the others
        remaining = {
            s: (o.n_samples - o.cursor if s in active and o.epoch == epoch else 0)
            for s, o in self.orders.items()
        }
        total = sum(remaining.values())
        if total == 0:
            self.mixture = MixtureSchedule(self._weights())
            return
        self.mixture = MixtureSchedule({s: Fraction(r, total) for s, r in remaining.items()}, until=total)

    # ---- order -----------------------------------------------------------------------------------
    def next_batch(self, want: range | None = None) -> list[tuple[str, int]]:
        """The next global batch (switching phase first if its token budget is spent).

        With `want` (a rank's positions in the global batch) only those samples' indices are
        computed; the others are advanced past and come back as -1."""
        self._maybe_switch_phase()
        batch = []
        for k in range(self.global_batch_size):
            if self.mixture.until is not None and self.mixture.count >= self.mixture.until:
                self.mixture = MixtureSchedule(self._weights())
            source = self.mixture.next()
            batch.append((source, self.orders[source].next(lookup=want is None or k in want)))
        self.step += 1
        self.tokens += self.tokens_per_step
        return batch

    def peek_seq_len(self) -> int:
        """The seq_len of the next global batch (after a phase switch that is due)."""
        return phase_seq_len(self.phases, self.phase, self.tokens)

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "step": self.step,
            "tokens": self.tokens,
            "phase": self.phase,
            "source_tokens": dict(self.source_tokens),
            "mixture": self.mixture.state_dict(),
            "sources": {s: order.state_dict() for s, order in self.orders.items()},
        }

    def load_state_dict(self, state: dict[str, Any], take_appends: bool = True) -> None:
        """Restore a position, then take in appends (`update_sources` with the current sizes)
        unless `take_appends` is false (the caller does it later, e.g. after finishing a step)."""
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"sampler state version {state.get('version')} is not {STATE_VERSION}; it comes from another release"
            )
        if int(state["seed"]) != self.seed:
            raise DataError(
                f"the checkpoint's data seed is {state['seed']} but the recipe's is {self.seed}; use the same seed to resume"
            )
        if int(state["global_batch_size"]) != self.global_batch_size:
            raise DataError(
                f"the checkpoint's global batch size is {state['global_batch_size']} but this run's is "
                f"{self.global_batch_size}; keep micro_batch_size * grad_accum * world_size the same to resume"
            )
        if int(state["phase"]) >= len(self.phases):
            raise DataError(
                f"the checkpoint is in phase {state['phase']} but only {len(self.phases)} phases are configured"
            )
        current_tokens = self.source_tokens
        self.step, self.tokens, self.phase = int(state["step"]), int(state["tokens"]), int(state["phase"])
        self.source_tokens = {s: int(t) for s, t in state["source_tokens"].items()}
        self.mixture = MixtureSchedule.from_state(state["mixture"])
        self.orders = {
            s: SourceOrder.from_state(s, self._source_key(s), st) for s, st in state["sources"].items()
        }
        self.current_sizes = current_tokens
        if take_appends:
            self.update_sources(current_tokens)
