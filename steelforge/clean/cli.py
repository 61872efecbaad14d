"""`steelforge data ...`: cleaning tools beside the `clean` stage (imports stay light until a command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(
    help="Cleaning tools: compare the two operator semantics on a recipe, list the operators.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command("compare")
def compare(
    recipe: Annotated[
        str, typer.Argument(help="Recipe YAML with a data: section, or an embedded recipe name.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a recipe field: key.path=value (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default <recipe out_dir>/compare).")
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", min=0, help="Example documents per operator and kind.")
    ] = 3,
    num_workers: Annotated[int | None, typer.Option("--num-workers", min=1, help="Worker processes.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run even if both outputs are complete.")] = False,
) -> None:
    """Run the recipe's cleaning in data_juicer and language_aware semantics; show where they disagree.

    Prints, per operator, the documents each semantics rejects and how many are kept by one and
    rejected by the other (or rejected at another operator), with example ids and the statistics both
    measured; writes the full report to <out>/compare.json.

    Example:

      steelforge data compare recipes/steel-1b/clean_text.yaml --set data.num_workers=2
    """
    from steelforge.clean.compare import compare_semantics, print_compare, write_report
    from steelforge.errors import SteelforgeError
    from steelforge.recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    if loaded.data is None:
        raise SteelforgeError(f"recipe '{recipe}' has no 'data:' section; add one to compare its cleaning")
    out_dir = out if out is not None else loaded.root / "compare"
    report = compare_semantics(
        loaded.data,
        out_dir,
        num_workers=num_workers,
        examples=examples,
        raw_dir=loaded.root / "raw",
        force=force,
    )
    print_compare(report, examples)
    path = write_report(report, out_dir / "compare.json")
    from steelforge.reporting import console

    console.print(f"report: {path}")


@data_app.command("ops")
def ops() -> None:
    """List every registered operator with its kind, parameters (with defaults) and purpose."""
    import inspect
    import sys

    from rich.markup import escape
    from rich.table import Table

    from steelforge.clean.ops import registered_ops
    from steelforge.reporting import console

    table = Table(
        title="operators (every one runs in data_juicer or language_aware semantics)", title_justify="left"
    )
    for column in ("operator", "kind", "parameters", "what it does"):
        table.add_column(column, overflow="fold")
    for name, cls in sorted(registered_ops().items()):
        params = []
        for pname, param in inspect.signature(cls.__init__).parameters.items():
            if pname in ("self", "semantics") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            default = param.default
            if default is inspect.Parameter.empty:
                params.append(pname)
            else:
                params.append(f"{pname}={'no limit' if default == sys.maxsize else repr(default)}")
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        table.add_row(name, cls.kind, escape(", ".join(params)), escape(doc))
    console.print(table)
