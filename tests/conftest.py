"""Shared test helpers: paths to ../shared reference data, skipped cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("STEELFORGE_QUIET", "1")

# CI replays the same examples on every run (a red CI must mean a change broke something); local runs keep
# exploring new random examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEELFORGE_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
STEEL_SAMPLES = SHARED / "data" / "steel_samples"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a message saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (it ships beside the repository as ../shared, not inside it)")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return shared_path("fixtures")


@pytest.fixture
def steel_samples_dir() -> Path:
    return shared_path("data", "steel_samples")
