"""Exact order statistics of magnitudes without sorting: a two-level radix histogram.

mergekit finds the top-k entries of a task vector with an argsort of the whole tensor, which is
where TIES and breadcrumbs spend their time. The k-th smallest of non-negative float32 values only
needs their bit patterns, which order the same way as the values: a first pass histograms the top
16 bits (sign, exponent and 7 mantissa bits), which names the bucket holding the wanted rank; a
second pass histograms the low 16 bits of the values inside that bucket, which gives every distinct
value there with its count. Both passes run over chunks, so nothing of the tensor's size is kept.
Small tensors (up to SMALL_VALUES entries) skip the histograms: their values are kept and sorted.

The first pass also counts, per bucket, the values whose low 16 bits are all zero: exactly the
bucket's smallest value, which is a bf16 number. A task vector of bf16 (or any 8-bit-mantissa)
checkpoints is made of such values nearly everywhere (the difference of two nearby bf16 weights is a
small multiple of their spacing), so the wanted rank usually falls among them, its value is known
after the first pass, and the second pass is skipped.

Ties (equal magnitudes, common once bf16 weights are subtracted) are resolved like a stable sort:
among equal values the one with the lower flat index ranks first. `KeepRule` then keeps exactly the
asked number of entries, counting ties in flat order as the chunks go by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_HIGH_BUCKETS = 1 << 15  # non-negative float32: the sign bit is 0, so the top 16 bits are < 2**15
_LOW_BUCKETS = 1 << 16
# Up to this many values (norm vectors, small projections) are kept and sorted instead: the
# histograms' fixed cost (tens of thousands of buckets to clear, add and scan) would dominate.
SMALL_VALUES = 1 << 15
# Histogram keys are gathered this many at a time (int32) and counted by one bincount: each
# bincount clears and adds a 32K- or 64K-bucket histogram, which per 128K-value chunk cost as
# much memory traffic as the values themselves.
KEY_BATCH = 1 << 20


def _bisect_right(cumulative: torch.Tensor, value: int) -> int:
    """bisect.bisect_right on a sorted 1-D int64 tensor (without making it a list)."""
    import torch

    probe = torch.tensor([value], dtype=cumulative.dtype)
    return int(torch.searchsorted(cumulative, probe, right=True)[0])


def _bits(values: torch.Tensor) -> torch.Tensor:
    import torch

    return values.float().contiguous().view(torch.int32)


class RankSelector:
    """Order statistics of a stream of non-negative float32 chunks, fed twice in the same order.

    Pass 1: `add` every chunk, then `prepare(ranks)` with the 0-based ascending ranks wanted.
    Pass 2 (only when `needs_second_pass`): `refine` every chunk again. Then `value_at(rank)`.
    With `with_sums`, `sum_below(rank)` gives the sum of the `rank` smallest values (for rescaling).
    """

    def __init__(self, device: torch.device, *, with_sums: bool = False) -> None:
        import torch

        self.device = device
        self.with_sums = with_sums
        self.total = 0
        # Small mode: the values themselves, sorted at `prepare` (None once past SMALL_VALUES).
        self._small: list[torch.Tensor] | None = []
        self._sorted: torch.Tensor | None = None
        self._prefix_sums: torch.Tensor | None = None
        self._counts = torch.zeros(0, dtype=torch.int64, device=device)
        self._sums: torch.Tensor | None = None
        # Cumulative counts (and sums) of the buckets, kept as tensors: a histogram's 32K entries
        # cost a millisecond to turn into a Python list, and only a few of them are ever read.
        self._cum = torch.zeros(0, dtype=torch.int64)
        self._cum_sums = torch.zeros(0, dtype=torch.float64)
        self._low: dict[int, torch.Tensor] = {}
        self._low_cum: dict[int, torch.Tensor] = {}
        # Without sums, the first pass counts 2 * bucket + [low 16 bits != 0]: `_split` holds
        # those counts, `_pure` (after prepare) each bucket's count of values with low bits 0.
        self._split: torch.Tensor | None = None
        self._pure: torch.Tensor | None = None
        self._floor: torch.Tensor | None = None  # int32 scratch for the keys
        self._batches: dict[int, _KeyBatch] = {}  # -1: the high histogram; else a bucket's

    # -- pass 1 ---------------------------------------------------------------------------------
    def add(self, values: torch.Tensor) -> None:
        if self._small is not None:
            if self.total + values.numel() <= SMALL_VALUES:
                self._small.append(values.float().reshape(-1).clone())
                self.total += values.numel()
                return
            kept, self._small = self._small, None
            self._start_histograms()
            self.total = 0
            for chunk in kept:
                self._add_to_histograms(chunk)
        self._add_to_histograms(values)

    def _start_histograms(self) -> None:
        import torch

        self._counts = torch.zeros(_HIGH_BUCKETS, dtype=torch.int64, device=self.device)
        if self.with_sums:
            self._sums = torch.zeros(_HIGH_BUCKETS, dtype=torch.float64, device=self.device)
        else:
            self._split = torch.zeros(2 * _HIGH_BUCKETS, dtype=torch.int64, device=self.device)

    def _add_to_histograms(self, values: torch.Tensor) -> None:
        import torch

        bits = _bits(values)
        if self._sums is not None:  # the sums need the values beside their keys: no batching
            high = bits >> 16
            self._counts += torch.bincount(high, minlength=_HIGH_BUCKETS)
            self._sums += torch.bincount(high, weights=values.float(), minlength=_HIGH_BUCKETS)
        else:
            # floor(bits / 2**16) + ceil(bits / 2**16) = 2 * bucket + [low bits != 0], with the
            # ceiling as ((bits - 1) >> 16) + 1, which cannot overflow.
            count = bits.numel()
            if self._floor is None or self._floor.numel() < count:
                self._floor = torch.empty(count, dtype=torch.int32, device=self.device)
            floor = torch.bitwise_right_shift(bits, 16, out=self._floor[:count])
            keys = self._batch(-1, 2 * _HIGH_BUCKETS).slot(count)
            torch.sub(bits, 1, out=keys).bitwise_right_shift_(16).add_(floor).add_(1)
        self.total += values.numel()

    def _batch(self, key: int, buckets: int) -> _KeyBatch:
        if key not in self._batches:
            target = self._split if key == -1 else None
            self._batches[key] = _KeyBatch(self.device, buckets, target)
        return self._batches[key]

    def _flush(self) -> None:
        """Count every batched key (before any answer is read)."""
        for key, batch in self._batches.items():
            counts = batch.flush()
            if key >= 0 and counts is not None:
                counts = counts[1:-1]
                current = self._low[key]
                self._low[key] = counts if current is None else current.add_(counts)
        self._batches.clear()

    def prepare(self, ranks: list[int]) -> None:
        """Fix the buckets the wanted ranks fall in; the second pass resolves inside them."""
        if self._small is not None:
            import torch

            empty = torch.zeros(0, dtype=torch.float32, device=self.device)
            self._sorted = torch.sort(torch.cat(self._small) if self._small else empty).values
            if self.with_sums:
                self._prefix_sums = self._sorted.double().cumsum(0)
            return
        self._flush()
        if self._split is not None:
            self._counts = self._split.view(-1, 2).sum(1)
            self._pure = self._split[0::2].cpu()
            self._split = None
        self._cum = self._counts.cumsum(0).cpu()
        if self._sums is not None:
            self._cum_sums = self._sums.cumsum(0).cpu()
        for rank in ranks:
            if 0 <= rank < self.total:
                bucket = self._bucket_of(rank)
                if not self._in_pure_part(bucket, rank):
                    self._low.setdefault(bucket, None)  # type: ignore[arg-type]

    def _in_pure_part(self, bucket: int, rank: int) -> bool:
        """Whether ascending rank `rank` falls among its bucket's values with low bits 0: the
        bucket's smallest value, so they come first in it."""
        if self._pure is None:
            return False
        return rank - self._below_bucket(bucket) < int(self._pure[bucket])

    @property
    def needs_second_pass(self) -> bool:
        return any(v is None for v in self._low.values())

    # -- pass 2 ---------------------------------------------------------------------------------
    def refine(self, values: torch.Tensor) -> None:
        import torch

        bits = _bits(values)
        for bucket in self._low:
            # In-bucket values map to 1..65536, everything else to 0 or 65537: one bincount.
            keys = self._batch(bucket, _LOW_BUCKETS + 2).slot(bits.numel())
            torch.sub(bits, (bucket << 16) - 1, out=keys).clamp_(0, _LOW_BUCKETS + 1)

    # -- answers --------------------------------------------------------------------------------
    def _bucket_of(self, rank: int) -> int:
        return _bisect_right(self._cum, rank)

    def _below_bucket(self, bucket: int) -> int:
        """How many values lie in the buckets before `bucket`."""
        return int(self._cum[bucket - 1]) if bucket > 0 else 0

    def _count_through(self, bucket: int, low: int) -> int:
        """How many values lie below `bucket`, plus those in it with low bits <= `low`."""
        below = self._below_bucket(bucket)
        if bucket not in self._low and self._pure is not None:
            if low != 0:  # pragma: no cover - callers only ask an unrefined bucket for its floor
                raise ValueError(f"bucket {bucket} was not refined")
            return below + int(self._pure[bucket])
        return below + int(self._low_cum_of(bucket)[low])

    def _low_cum_of(self, bucket: int) -> torch.Tensor:
        import torch

        self._flush()
        if bucket not in self._low_cum:
            counts = self._low[bucket]
            if counts is None:
                counts = torch.zeros(_LOW_BUCKETS, dtype=torch.int64)
            self._low_cum[bucket] = counts.cumsum(0).cpu()
        return self._low_cum[bucket]

    def _count_below(self, value: float, *, right: bool) -> int:
        """Small mode: how many values are < value (<= value with `right`)."""
        import torch

        assert self._sorted is not None
        probe = torch.tensor([value], dtype=self._sorted.dtype, device=self._sorted.device)
        return int(torch.searchsorted(self._sorted, probe, right=right)[0])

    def value_at(self, rank: int) -> tuple[float, int]:
        """The value of ascending rank `rank` (0-based) and how many values are strictly smaller."""
        import struct

        if self._sorted is not None:
            value = float(self._sorted[rank])
            return value, self._count_below(value, right=False)

        bucket = self._bucket_of(rank)
        below_bucket = self._below_bucket(bucket)
        if bucket not in self._low and self._in_pure_part(bucket, rank):
            return struct.unpack("<f", struct.pack("<i", bucket << 16))[0], below_bucket
        low_cum = self._low_cum_of(bucket)
        low = _bisect_right(low_cum, rank - below_bucket)
        less = below_bucket + (int(low_cum[low - 1]) if low > 0 else 0)
        value = struct.unpack("<f", struct.pack("<i", (bucket << 16) | low))[0]
        return value, less

    def sum_below(self, rank: int) -> float:
        """Sum of the `rank` smallest values (needs with_sums)."""
        import struct

        import torch

        if rank <= 0:
            return 0.0
        if self._prefix_sums is not None:
            return float(self._prefix_sums[min(rank, self.total) - 1])
        self._flush()
        if rank >= self.total:
            return float(self._cum_sums[-1]) if self._cum_sums.numel() else 0.0
        value, less = self.value_at(rank)
        bucket = self._bucket_of(rank)
        total = float(self._cum_sums[bucket - 1]) if bucket > 0 else 0.0
        counts = self._low[bucket]
        low = struct.unpack("<i", struct.pack("<f", value))[0] & 0xFFFF
        if counts is not None and low > 0:
            bits = torch.arange(low, dtype=torch.int32, device=counts.device) | (bucket << 16)
            values = bits.view(torch.float32).double()
            total += float((counts[:low].double() * values).sum())
        return total + (rank - less) * value


class _KeyBatch:
    """Histogram keys waiting to be counted together; `flush` counts them (into `target` when
    given, else returns the counts)."""

    def __init__(self, device: torch.device, buckets: int, target: torch.Tensor | None) -> None:
        self._device = device
        self._buckets = buckets
        self._target = target
        self._keys: torch.Tensor | None = None
        self._used = 0
        self._counts: torch.Tensor | None = None

    def slot(self, count: int) -> torch.Tensor:
        """Room for `count` keys (int32), to be written before the next call."""
        import torch

        if self._keys is None:
            self._keys = torch.empty(max(count, KEY_BATCH), dtype=torch.int32, device=self._device)
        if self._used + count > self._keys.numel():
            self._count()
            if count > self._keys.numel():
                self._keys = torch.empty(count, dtype=torch.int32, device=self._device)
        start, self._used = self._used, self._used + count
        return self._keys[start : self._used]

    def _count(self) -> None:
        import torch

        if self._used == 0 or self._keys is None:
            return
        counts = torch.bincount(self._keys[: self._used], minlength=self._buckets)
        self._used = 0
        if self._target is not None:
            self._target += counts
        elif self._counts is None:
            self._counts = counts
        else:
            self._counts += counts

    def flush(self) -> torch.Tensor | None:
        self._count()
        self._keys = None
        return self._counts


@dataclass
class TieWindow:
    """Keep the entries equal to `value` whose index among those ties (flat order) is in [start, end)."""

    value: float
    start: int
    end: int | None  # None: no end
    seen: int = 0


@dataclass
class KeepRule:
    """Which entries a magnitude selection keeps: lower < |x| < upper, plus windows of the ties."""

    lower: float | None = None
    upper: float | None = None
    ties: list[TieWindow] = field(default_factory=list)
    keep_nothing: bool = False
    lower_inclusive: bool = False  # keep |x| >= lower (every tie at the bound is kept)

    def restart(self) -> None:
        """Forget the ties counted so far, to walk the chunks again from the start."""
        for tie in self.ties:
            tie.seen = 0

    def shrink_bound(self) -> float | None:
        """When the next chunk's kept entries are exactly those with |x| > b (a lower bound and
        no tie left to count), b: then `torch.hardshrink(x, b)` is x times the keep mask in one
        pass. None when the rule needs its masks (an upper bound, or ties still being counted)."""
        if self.keep_nothing or self.lower is None or self.upper is not None:
            return None
        if any(tie.end is None or tie.seen < tie.end for tie in self.ties):
            return None
        if not self.lower_inclusive:
            return self.lower
        return _float_below(self.lower)

    def counted_bound(self, values: torch.Tensor, scratch: torch.Tensor) -> float | None:
        """Like `shrink_bound`, for a chunk inside the window of kept ties at the lower bound:
        counts the chunk's ties (|x| == bound, into `scratch`, float32 of the chunk's size) and,
        when the window keeps every one of them, returns the bound that keeps |x| >= it. None
        (nothing counted) when the window ends inside the chunk, or the rule is not one lower
        bound with its ties: then `keep` takes the chunk."""
        import torch

        if self.keep_nothing or self.lower is None or self.upper is not None:
            return None
        if len(self.ties) != 1 or self.ties[0].value != self.lower or self.lower_inclusive:
            return None
        tie = self.ties[0]
        bound = _float_below(self.lower)
        if tie.seen < tie.start or bound is None:
            return None
        if tie.end is None:
            return bound  # every later tie is kept: no need to count them
        equal = torch.eq(torch.abs(values, out=scratch), tie.value, out=scratch)
        count = int(equal.sum())
        if tie.seen + count > tie.end:
            return None
        tie.seen += count
        return bound

    def keep(
        self, magnitudes: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The next chunk's keep mask as float32 0/1, to multiply by (None: keep all); written
        into `out` (float32, the chunk's size) when given.

        Chunks must come in flat order. Masks are float, not bool: on the CPU, comparisons that
        write float are several times faster than bool ones, and so is multiplying by them.
        """
        import torch

        if self.keep_nothing:
            return torch.zeros_like(magnitudes, dtype=torch.float32)
        # Thresholds are float32 values (mergekit also ranks float32 magnitudes on the CPU).
        magnitudes = magnitudes.float()
        mask = None
        if self.lower is not None:
            target = out if out is not None else torch.empty_like(magnitudes)
            compare = torch.ge if self.lower_inclusive else torch.gt
            mask = compare(magnitudes, self.lower, out=target)
        if self.upper is not None:
            if mask is None and out is not None:
                mask = torch.lt(magnitudes, self.upper, out=out)
            else:
                upper = torch.lt(magnitudes, self.upper, out=torch.empty_like(magnitudes))
                mask = upper if mask is None else mask.mul_(upper)
        for tie in self.ties:
            if tie.end is not None and tie.seen >= tie.end:
                continue  # every later tie is dropped
            equal = torch.eq(magnitudes, tie.value, out=torch.empty_like(magnitudes))
            count = int(equal.sum())
            first, last = tie.seen, tie.seen + count
            tie.seen = last
            if count == 0 or last <= tie.start:
                continue
            chosen = equal
            if first < tie.start or (tie.end is not None and last > tie.end):
                # The window's edge falls in this chunk: number the ties in flat order.
                order = equal.flatten().cumsum(0).view_as(equal).add_(first - 1)
                chosen = equal.mul_(torch.ge(order, tie.start, out=torch.empty_like(order)))
                if tie.end is not None:
                    chosen.mul_(torch.lt(order, tie.end, out=order))
            # Ties equal a bound, so the strict comparisons above never counted them.
            mask = chosen if mask is None else mask.add_(chosen)
        return mask


def _float_below(value: float) -> float | None:
    """The float32 just below a float32 value > 0, so |x| >= value is |x| > it (None for 0)."""
    import struct

    bits = struct.unpack("<i", struct.pack("<f", value))[0]
    if bits <= 0:
        return None  # 0: everything is kept, which the masks handle
    return struct.unpack("<f", struct.pack("<i", bits - 1))[0]


def top_k_rule(selector: RankSelector, k: int) -> KeepRule:
    """Keep the k largest (ties: lower flat index first), like a stable descending argsort."""
    n = selector.total
    if k >= n:
        return KeepRule()
    if k <= 0:
        return KeepRule(keep_nothing=True)
    value, less = selector.value_at(n - k)
    # Everything above `value` is kept; the rest of the k come from the ties, first ones first.
    equal = _count_equal(selector, value, less)
    greater = n - less - equal
    if k - greater == equal:  # every tie is kept: no need to count them chunk by chunk
        return KeepRule(lower=value, lower_inclusive=True)
    return KeepRule(lower=value, ties=[TieWindow(value, 0, k - greater)])


def _count_equal(selector: RankSelector, value: float, less: int) -> int:
    import struct

    if selector._sorted is not None:
        return selector._count_below(value, right=True) - less
    bits = struct.unpack("<i", struct.pack("<f", value))[0]
    return selector._count_through(bits >> 16, bits & 0xFFFF) - less


def rank_window_rule(selector: RankSelector, lo: int, hi: int) -> KeepRule:
    """Keep ascending ranks [lo, hi) of a stable ascending sort (ties: lower flat index first)."""
    n = selector.total
    lo, hi = max(0, lo), min(n, hi)
    if hi <= lo:
        return KeepRule(keep_nothing=True)
    rule = KeepRule()
    low_value = high_value = None
    if lo > 0:
        low_value, low_less = selector.value_at(lo)
        rule.lower = low_value
    if hi < n:
        high_value, high_less = selector.value_at(hi)
        rule.upper = high_value
    if low_value is not None and low_value == high_value:
        rule.ties.append(TieWindow(low_value, lo - low_less, hi - high_less))
    else:
        if low_value is not None:
            rule.ties.append(TieWindow(low_value, lo - low_less, None))
        if high_value is not None:
            rule.ties.append(TieWindow(high_value, 0, hi - high_less))
    return rule


def kept_sum(selector: RankSelector, lo: int, hi: int) -> float:
    """Sum of the values of ascending ranks [lo, hi) (needs with_sums)."""
    lo, hi = max(0, lo), min(selector.total, hi)
    if hi <= lo:
        return 0.0
    return selector.sum_below(hi) - selector.sum_below(lo)
