"""User-facing errors: one sentence that names the bad key/file/value and the fix.

The CLI prints a `SteelforgeError` as a single red line and exits with code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class SteelforgeError(Exception):
    """An error caused by the user's input (recipe, files, arguments), not by a bug."""


class RecipeError(SteelforgeError):
    """A recipe that cannot be run as written."""


class DataError(SteelforgeError):
    """Input data or a store that is missing, corrupted or inconsistent."""
