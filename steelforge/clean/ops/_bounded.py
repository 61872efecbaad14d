"""Filters that keep a document when one statistic lies in a closed range [lo, hi]."""

from __future__ import annotations

from typing import Any, ClassVar

from steelforge.clean.ops._text import check_semantics, dj_round
from steelforge.clean.ops.base import Filter, Semantics


class BoundedFilter(Filter):
    """One statistic (`stat_key`), kept when `lo <= value <= hi` (Data-Juicer's closed interval).

    Subclasses implement `measure_dj` and `measure_aware`; in `data_juicer` semantics float statistics
    are rounded to 10 decimals before the decision, as Data-Juicer stores them.
    """

    stat_key: ClassVar[str] = ""

    def __init__(self, lo: float | None, hi: float | None, semantics: Semantics) -> None:
        super().__init__(semantics=check_semantics(semantics))  # type: ignore[arg-type]
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"the lower bound {lo} is above the upper bound {hi}")
        self.lo = lo
        self.hi = hi
        self.dj = semantics == "data_juicer"

    def measure_dj(self, text: str) -> float:
        raise NotImplementedError

    def measure_aware(self, text: str) -> float:
        raise NotImplementedError

    def compute_stats(self, text: str) -> dict[str, Any]:
        if self.dj:
            value = self.measure_dj(text)
            if isinstance(value, float):
                value = dj_round(value)
        else:
            value = self.measure_aware(text)
        return {self.stat_key: value}

    def keep(self, stats: dict[str, Any]) -> bool:
        value = stats[self.stat_key]
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {"stat": self.stat_key, "value": stats[self.stat_key], "min": self.lo, "max": self.hi}

    def describe(self) -> str:
        return f"{self.name}[{self.lo}, {self.hi}]"
