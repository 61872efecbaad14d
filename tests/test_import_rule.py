"""The layering rule: a stage module never imports a later stage (data flows left to right).

Order: tokenizers, models, clean, tokens, train, posttrain, eval, export, infer. `models/` (architectures,
presets, loading, generation) consumes no stage's output and cleaning's perplexity filter scores with a causal LM,
so it sits before cleaning. Top-level modules
(cli.py, recipe.py, reporting.py, errors.py, ...) see everything and are exempt; imports inside functions
count too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "steelforge"
STAGES = ("tokenizers", "models", "clean", "tokens", "train", "posttrain", "eval", "export", "infer")
# Known exceptions as (module, imported name), each with its reason; the test fails when one disappears, so the
# list cannot go stale. None today.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "steelforge" and parts[1] in STAGES:
        return parts[1]
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Absolute names of every `import`/`from ... import` in the tree (relative imports resolved)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from steelforge import eval` imports a stage too
            if name == "steelforge":
                found += [(node.lineno, f"steelforge.{alias.name}") for alias in node.names]
    return found


def violations(source: str, module: str, *, is_package: bool = False, exempt: frozenset = frozenset()) -> list[str]:
    """`module`'s imports of later stages as 'module:line imports name' strings (empty: the rule holds)."""
    stage = _stage_of(module)
    if stage is None:
        return []
    rank = STAGES.index(stage)
    out = []
    for line, name in _imported(ast.parse(source), module, is_package):
        target = _stage_of(name)
        if target is not None and STAGES.index(target) > rank and (module, name) not in exempt:
            out.append(f"{module}:{line} imports {name} ({target} comes after {stage})")
    return out


def test_no_stage_imports_a_later_stage() -> None:
    problems: list[str] = []
    excepted: list[str] = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        source, module = path.read_text(encoding="utf-8"), _module_name(path)
        is_package = path.name == "__init__.py"
        problems += violations(source, module, is_package=is_package, exempt=frozenset(KNOWN_EXCEPTIONS))
        excepted += violations(source, module, is_package=is_package)
    assert not problems, "\n".join(problems)
    seen = {(v.split(":")[0], v.split(" imports ")[1].split(" ")[0]) for v in excepted}
    stale = KNOWN_EXCEPTIONS - seen
    assert not stale, f"these exceptions no longer occur; remove them from KNOWN_EXCEPTIONS: {sorted(stale)}"


@pytest.mark.parametrize(
    ("source", "module", "bad"),
    [
        ("from steelforge.posttrain.losses import dpo_loss\n", "steelforge.train.trainer", True),
        ("def f():\n    import steelforge.infer.sample\n", "steelforge.tokens.loader", True),
        ("from ..eval import runner\n", "steelforge.train.pretrain", True),
        ("from steelforge import export\n", "steelforge.models.loading", True),
        ("def f():\n    from steelforge.clean.io import iter_documents\n", "steelforge.models.loading", True),
        ("from steelforge.models.loading import load_model\n", "steelforge.clean.ops.perplexity_filter", False),
        ("from steelforge.tokens.loader import TokenLoader\n", "steelforge.train.pretrain", False),
        ("from steelforge.train.trainer import Trainer\n", "steelforge.cli", False),  # top level is exempt
        ("from . import base\n", "steelforge.train.callbacks", False),
    ],
)
def test_a_planted_violation_is_caught(source: str, module: str, bad: bool) -> None:
    assert bool(violations(source, module, is_package=module.endswith("callbacks"))) is bad
