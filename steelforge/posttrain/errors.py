"""Post-training user errors: `SteelforgeError`s that are also `ValueError`s (wrong option values)."""

from __future__ import annotations

from steelforge.errors import SteelforgeError


class LossConfigError(SteelforgeError, ValueError):
    """A loss option that cannot be used as given (unknown type, missing lengths, smoothing it would ignore)."""


class RewardError(SteelforgeError, ValueError):
    """A reward function name or `module:function` reference that cannot be resolved."""
