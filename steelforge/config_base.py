"""Base class for every recipe section: typed, documented, and strict about unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys, so that a misspelled key fails before any work."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
