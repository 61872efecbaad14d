"""The `steelforge` command: one sub-command per stage, plus `run` (all stages) and tools.

Stage modules are imported lazily so that `steelforge --help` answers at once.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Annotated

import typer

from steelforge.errors import SteelforgeError
from steelforge.reporting import StageReport, console, print_report, print_table

if TYPE_CHECKING:
    from steelforge.recipe import Recipe

app = typer.Typer(
    name="steelforge",
    help="Raw text to a trained model: clean -> pack -> pretrain, resumable and measured.\n\n"
    "Examples:\n\n"
    "  steelforge run demo                      # every stage of the embedded demo recipe\n\n"
    "  steelforge clean recipes/steel-1b/clean_text.yaml --set data.num_workers=2\n\n"
    "  steelforge pretrain my.yaml --set pretrain.max_steps=10\n\n"
    "  steelforge info",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# stage -> (module, run function, completeness check)
STAGE_RUNNERS: dict[str, tuple[str, str, str]] = {
    "data": ("steelforge.clean.pipeline", "run_clean", "clean_complete"),
    "pack": ("steelforge.tokens.pack", "run_pack", "pack_complete"),
    "pretrain": ("steelforge.train.pretrain", "run_pretrain", "pretrain_complete"),
    "grpo": ("steelforge.posttrain.grpo", "run_grpo", "grpo_complete"),
    "eval": ("steelforge.eval.stage", "run_eval_stage", "eval_complete"),
}

RecipeArg = Annotated[str, typer.Argument(help="Recipe YAML file, or the name of an embedded recipe (e.g. demo).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field: key.path=value (repeatable)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run even if the stage's outputs are complete.")]


def run_stage(stage: str, recipe: Recipe, force: bool = False) -> StageReport:
    """Run one stage of a loaded recipe, or skip it when its outputs are already complete."""
    module_name, run_name, done_name = STAGE_RUNNERS[stage]
    module = importlib.import_module(module_name)
    if not force and getattr(module, done_name)(recipe):
        report = StageReport(stage=stage, skipped=True)
        report.outputs["dir"] = recipe.stage_dir(stage)
        return report
    start = time.perf_counter()
    report = getattr(module, run_name)(recipe)
    report.seconds = time.perf_counter() - start
    return report


def _load(recipe: str, overrides: list[str] | None) -> Recipe:
    from steelforge.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


def _single_stage(stage: str, recipe: str, overrides: list[str] | None, force: bool) -> None:
    loaded = _load(recipe, overrides)
    if getattr(loaded, stage) is None:
        raise SteelforgeError(f"recipe '{recipe}' has no '{stage}:' section; add one to run this stage")
    print_report(run_stage(stage, loaded, force=force))


@app.command()
def run(recipe: RecipeArg = "demo", set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Run every stage the recipe configures, in order; stages whose outputs are complete are skipped.

    Examples:

      steelforge run demo

      steelforge run recipes/demo.yaml --set pretrain.max_steps=50
    """
    from steelforge.recipe import PLANNED_STAGES

    loaded = _load(recipe, set_)
    stages = loaded.stages()
    console.print(f"[bold]steelforge run[/] {recipe}: stages {' -> '.join(stages) or '(none)'}  (outputs in {loaded.root})")
    reports = []
    for stage in stages:
        console.rule(f"[bold]{stage}")
        report = run_stage(stage, loaded, force=force)
        print_report(report)
        reports.append(report)
    extra = _after_run(loaded)
    rows = [(r.stage, "skipped (complete)" if r.skipped else f"done in {r.seconds:,.1f} s") for r in reports]
    rows += [(name, status) for name, status in extra]
    rows += [(s, "not available in this version yet") for s in PLANNED_STAGES]
    print_table(f"run '{loaded.name}' summary", ["stage", "status"], rows)


def _after_run(recipe: Recipe) -> list[tuple[str, str]]:
    """Post-run extras that are not stages of their own (sampling text from the trained model)."""
    if recipe.pretrain is None:
        return []
    from steelforge.infer.sample import sample_after_pretrain

    return sample_after_pretrain(recipe)


@app.command()
def clean(
    recipe: RecipeArg,
    set_: SetOpt = None,
    force: ForceOpt = False,
    trace: Annotated[int, typer.Option("--trace", help="Show N before/after examples per mapper.")] = 0,
) -> None:
    """Clean and deduplicate raw documents (the recipe's `data:` section).

    Examples:

      steelforge clean recipes/steel-1b/clean_text.yaml

      steelforge clean my.yaml --set data.semantics=data_juicer --set data.num_workers=2 --trace 3
    """
    overrides = list(set_ or []) + ([f"data.trace={trace}"] if trace else [])
    _single_stage("data", recipe, overrides, force)


@app.command()
def pack(recipe: RecipeArg, set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Tokenize cleaned documents and pack them into a token store (the `pack:` section).

    Examples:

      steelforge pack recipes/demo.yaml

      steelforge pack my.yaml --set pack.num_workers=2
    """
    _single_stage("pack", recipe, set_, force)


@app.command()
def pretrain(recipe: RecipeArg, set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Pretrain a causal LM on a token store (the `pretrain:` section); also under torchrun.

    Examples:

      steelforge pretrain recipes/demo.yaml --set pretrain.max_steps=20

      torchrun --nproc_per_node 8 -m steelforge.cli pretrain recipes/steel-1b/pretrain.yaml
    """
    _single_stage("pretrain", recipe, set_, force)


def _register_eval() -> None:
    from steelforge.eval.cli import eval_command  # typer only at import time

    app.command("eval")(eval_command)


_register_eval()


@app.command()
def grpo(recipe: RecipeArg, set_: SetOpt = None, force: ForceOpt = False) -> None:
    """GRPO with verifiable rewards (the `grpo:` section): rollouts, rewards, group advantages, clipped updates.

    Examples:

      steelforge grpo recipes/moxin-7b/grpo.yaml --set grpo.model=runs/moxin/sft/hf

      steelforge grpo recipes/steel-1b/grpo_choice.yaml --set grpo.max_steps=10 --set grpo.num_generations=4
    """
    _single_stage("grpo", recipe, set_, force)


@app.command()
def info() -> None:
    """Print versions, devices and which optional extras are usable.

    Example:

      steelforge info
    """
    from steelforge.env_info import collect_info

    sections = collect_info()
    for title, rows in sections.items():
        print_table(title, ["", ""], rows)


@app.command()
def sample(
    model_dir: Annotated[str, typer.Argument(help="An exported model folder (e.g. runs/demo/pretrain/hf).")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt (repeatable).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 40,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Generate continuations from a trained model.

    Examples:

      steelforge sample runs/demo/pretrain/hf

      steelforge sample runs/demo/pretrain/hf -p "小明有3个苹果，" --temperature 0.8
    """
    from steelforge.infer.sample import DEFAULT_PROMPTS, generate_samples, print_samples

    prompts = tuple(prompt) if prompt else DEFAULT_PROMPTS
    outputs = generate_samples(model_dir, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    print_samples(prompts, outputs)


@app.command("validate")
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe without running anything and print it fully resolved.

    Example:

      steelforge validate recipes/steel-1b/pretrain.yaml --set pretrain.max_steps=10
    """
    loaded = _load(recipe, set_)
    typer.echo(loaded.to_yaml())
    console.print(f"[green]recipe is valid[/]: stages {', '.join(loaded.stages())}; fingerprint {loaded.fingerprint()}")


def _mount_subapps() -> None:
    """Tool groups owned by their stages (each module keeps its top-level imports light)."""
    for module_name, attr, name in (
        ("steelforge.clean.cli", "data_app", "data"),
        ("steelforge.tokens.store_cli", "store_app", "store"),
        ("steelforge.models.cli", "model_app", "model"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        sub = getattr(module, attr, None)
        if sub is not None:
            app.add_typer(sub, name=name)


_mount_subapps()


def main() -> None:
    """Console entry point: user errors are one red sentence and exit code 2."""
    try:
        app()
    except SteelforgeError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
