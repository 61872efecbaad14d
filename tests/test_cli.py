"""The command line: help lists the stages, user errors exit non-zero with one sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from steelforge.cli import app

runner = CliRunner()


def test_help_lists_stages_and_examples() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "clean", "pack", "pretrain", "info", "validate"):
        assert command in result.output
    assert "Examples" in result.output


def test_every_command_has_examples_in_help() -> None:
    for command in ("run", "clean", "pack", "pretrain", "info", "validate"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert "steelforge" in result.output, f"`steelforge {command} --help` shows no example"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = "from steelforge.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_missing_recipe_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    proc = _cli("validate", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_yaml_error_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2
    assert "line" in proc.stderr and "column" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_without_section_is_an_error(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\n", encoding="utf-8")
    proc = _cli("pack", str(recipe))
    assert proc.returncode == 2
    assert "has no 'pack:' section" in proc.stderr


def test_validate_prints_resolved_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nseed: 5\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(recipe), "--set", "seed=6"])
    assert result.exit_code == 0, result.output
    assert "seed: 6" in result.output


def test_info_runs() -> None:
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
