"""The operator contract shared by every cleaning operator and by the pipeline that runs them.

Operators carry Data-Juicer's names and parameters, so a Data-Juicer `process:` list runs unchanged.
Two semantics: `data_juicer` reproduces Data-Juicer 1.6.1's decisions exactly (quirks included);
`language_aware` keeps names and parameters but measures Chinese, English and code correctly.

- `Mapper.map_text(text) -> text`
- `Filter.compute_stats(text) -> dict` then `Filter.keep(stats) -> bool` (Data-Juicer's split of
  "compute stats" from "decide"); `Filter.explain(stats)` says which statistic and bound rejected it.
- `Deduplicator.signature(text)` per document (parallel), then `Deduplicator.find_duplicates(...)`
  over all signatures (global, deterministic: the first document in input order is kept), which the
  barrier reaches through `find_duplicates_streaming` (signatures read back in chunks).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal

from steelforge.errors import RecipeError

Semantics = Literal["data_juicer", "language_aware"]
SEMANTICS: tuple[str, ...] = ("data_juicer", "language_aware")

_REGISTRY: dict[str, type[Op]] = {}


def register_op(name: str) -> Callable[[type[Op]], type[Op]]:
    """Class decorator: make an operator available under its Data-Juicer name."""

    def wrap(cls: type[Op]) -> type[Op]:
        if name in _REGISTRY:
            raise ValueError(f"operator '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_ops() -> dict[str, type[Op]]:
    """All operators by name (imports the built-in operator modules on first use)."""
    import steelforge.clean.ops  # noqa: F401  (the package __init__ imports every operator module)

    return dict(_REGISTRY)


class Op:
    """Base of every operator: parameters are keyword arguments of `__init__` (Data-Juicer's names)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "op"

    def __init__(self, semantics: Semantics = "language_aware") -> None:
        self.semantics = semantics

    def describe(self) -> str:
        return self.name


class Mapper(Op):
    kind: ClassVar[str] = "mapper"

    def map_text(self, text: str) -> str:
        raise NotImplementedError


class Filter(Op):
    kind: ClassVar[str] = "filter"

    def compute_stats(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def keep(self, stats: dict[str, Any]) -> bool:
        raise NotImplementedError

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        """What the rejected-document record says: statistic name, value and the bound it broke."""
        return {"stats": stats}


class Deduplicator(Op):
    kind: ClassVar[str] = "deduplicator"

    def signature(self, text: str) -> Any:
        raise NotImplementedError

    def find_duplicates(self, ids: Sequence[str], signatures: Sequence[Any]) -> dict[str, str]:
        """Map each duplicate's id to the id of the kept document it duplicates (input order decides)."""
        raise NotImplementedError

    def find_duplicates_streaming(
        self, ids: Sequence[str], read: Callable[[], Iterable[Sequence[Any]]]
    ) -> dict[str, str]:
        """`find_duplicates` over the signatures that each call of `read()` yields again, in chunks in input
        order: what the pipeline's barrier calls. This default holds them all; a deduplicator whose
        signatures are large overrides it to keep less (MinHash keeps only its band keys)."""
        return self.find_duplicates(ids, [sig for chunk in read() for sig in chunk])


def build_op(spec: dict[str, Any] | str, semantics: Semantics) -> Op:
    """Build an operator from one `process:` entry: `{name: {param: value}}` or a bare name."""
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        name, params = next(iter(spec.items()))
        params = dict(params or {})
    else:
        raise RecipeError(f"process entry {spec!r} must be a single 'operator_name: {{params}}' mapping")
    ops = registered_ops()
    cls = ops.get(name)
    if cls is None:
        import difflib

        guess = difflib.get_close_matches(name, list(ops), n=1)
        fix = f"did you mean '{guess[0]}'?" if guess else "see `steelforge data ops` for the list"
        raise RecipeError(f"unknown operator '{name}' in data.process; {fix}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "semantics", "args", "kwargs"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise RecipeError(
            f"operator '{name}' has no parameter '{unknown[0]}'; its parameters are: {', '.join(sorted(accepted))}"
        )
    try:
        return cls(semantics=semantics, **params)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"operator '{name}' parameters {params}: {exc}") from exc
