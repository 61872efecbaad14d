"""The `steelforge` command: one sub-command per stage, plus `run` (all stages) and tools.

Stage modules are imported lazily so that `steelforge --help` answers at once.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Annotated, Any

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
    "tasks": ("steelforge.clean.synthetic_tasks", "run_tasks", "tasks_complete"),
    "data": ("steelforge.clean.pipeline", "run_clean", "clean_complete"),
    "pack": ("steelforge.tokens.pack", "run_pack", "pack_complete"),
    "pretrain": ("steelforge.train.pretrain", "run_pretrain", "pretrain_complete"),
    "sft": ("steelforge.posttrain.sft", "run_sft", "sft_complete"),
    "dpo": ("steelforge.posttrain.dpo", "run_dpo", "dpo_complete"),
    "grpo": ("steelforge.posttrain.grpo", "run_grpo", "grpo_complete"),
    "eval": ("steelforge.eval.stage", "run_eval_stage", "eval_complete"),
}

RecipeArg = Annotated[str, typer.Argument(help="Recipe YAML file, or the name of an embedded recipe (e.g. demo).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field: key.path=value (repeatable)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run even if the stage's outputs are complete.")]
NewRunOpt = Annotated[
    bool,
    typer.Option(
        "--force-new-run",
        help="pretrain: start at step 0 although checkpoints exist (the old run is moved to superseded-<time>/).",
    ),
]


def run_stage(stage: str, recipe: Recipe, force: bool = False, force_new_run: bool = False) -> StageReport:
    """Run one stage of a loaded recipe, or skip it when its outputs are already complete."""
    module_name, run_name, done_name = STAGE_RUNNERS[stage]
    module = importlib.import_module(module_name)
    if force_new_run and stage == "pretrain":
        start = time.perf_counter()
        report = module.run_pretrain(recipe, force_new_run=True)
        report.seconds = time.perf_counter() - start
        return report
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


def _single_stage(
    stage: str, recipe: str, overrides: list[str] | None, force: bool, force_new_run: bool = False
) -> None:
    loaded = _load(recipe, overrides)
    if getattr(loaded, stage) is None:
        raise SteelforgeError(f"recipe '{recipe}' has no '{stage}:' section; add one to run this stage")
    _preflight(loaded, [stage])
    print_report(run_stage(stage, loaded, force=force, force_new_run=force_new_run))


def _preflight(recipe: Recipe, stages: list[str]) -> None:
    """Every check that can fail before a stage starts (operators, inputs, tokenizer, model, folders)."""
    from steelforge.validate import preflight

    preflight(recipe, stages)


@app.command()
def run(
    recipe: RecipeArg = "demo", set_: SetOpt = None, force: ForceOpt = False, force_new_run: NewRunOpt = False
) -> None:
    """Run every stage the recipe configures, in order; stages whose outputs are complete are skipped.

    Examples:

      steelforge run demo

      steelforge run recipes/demo.yaml --set pretrain.max_steps=50
    """
    loaded = _load(recipe, set_)
    stages = loaded.stages()
    _preflight(loaded, stages)
    console.print(f"[bold]steelforge run[/] {recipe}: stages {' -> '.join(stages) or '(none)'}  (outputs in {loaded.root})")
    reports = []
    for stage in stages:
        console.rule(f"[bold]{stage}")
        report = run_stage(stage, loaded, force=force, force_new_run=force_new_run)
        print_report(report)
        reports.append(report)
    extra = _after_run(loaded)
    rows = [(r.stage, "skipped (complete)" if r.skipped else f"done in {r.seconds:,.1f} s") for r in reports]
    rows += [(name, status) for name, status in extra]
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
def pretrain(
    recipe: RecipeArg, set_: SetOpt = None, force: ForceOpt = False, force_new_run: NewRunOpt = False
) -> None:
    """Pretrain a causal LM on a token store (the `pretrain:` section); also under torchrun.

    Examples:

      steelforge pretrain recipes/demo.yaml --set pretrain.max_steps=20

      steelforge pretrain demo --set model.overrides.num_hidden_layers=2 --force-new-run

      torchrun --nproc_per_node 8 -m steelforge.cli pretrain recipes/steel-1b/pretrain.yaml

    To stop a torchrun run cleanly, send SIGTERM to its ranks (pkill -TERM -P <torchrun pid>): they
    checkpoint and torchrun exits 0; if the launcher dies, the ranks checkpoint and stop on their own.
    """
    _single_stage("pretrain", recipe, set_, force, force_new_run)


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
def sft(
    recipe: RecipeArg,
    set_: SetOpt = None,
    force: ForceOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Tokenize, print token statistics and 3 examples (trained spans lit).")
    ] = False,
) -> None:
    """Supervised fine-tuning on conversations (the `sft:` section); full or LoRA, also under torchrun.

    Examples:

      steelforge sft recipes/steel-1b/sft.yaml --dry-run

      steelforge sft my.yaml --set sft.max_steps=20 --set sft.lora.r=8

      torchrun --nproc_per_node 8 -m steelforge.cli sft recipes/steel-1b/sft.yaml
    """
    if not dry_run:
        _single_stage("sft", recipe, set_, force)
        return
    loaded = _load(recipe, set_)
    if loaded.sft is None:
        raise SteelforgeError(f"recipe '{recipe}' has no 'sft:' section; add one to run this stage")
    from steelforge.posttrain.sft import dry_run_sft

    print_report(dry_run_sft(loaded))


@app.command()
def dpo(recipe: RecipeArg, set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Direct preference optimisation (the `dpo:` section) from the SFT model against a frozen reference.

    Examples:

      steelforge dpo recipes/steel-1b/dpo.yaml

      steelforge dpo my.yaml --set dpo.loss_type=sigmoid_norm --set dpo.beta=5 --set dpo.precompute_ref_logps=true
    """
    _single_stage("dpo", recipe, set_, force)


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


@app.command("export")
def export_cmd(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoints/step_N folder, a checkpoints/ folder (newest step) or an hf/ folder.")],
    out_dir: Annotated[str, typer.Argument(help="Folder to write the released model into (replaced atomically).")],
    max_shard_size: Annotated[str, typer.Option(help="Split safetensors above this size (e.g. 2GB, 500MB).")] = "2GB",
    dtype: Annotated[str, typer.Option(help="Weights dtype: fp32, bf16 or fp16.")] = "fp32",
    run_dir: Annotated[str | None, typer.Option(help="The run folder the model card reads (default: guessed).")] = None,
    license_id: Annotated[str, typer.Option("--license", help="License id of the weights for the card.")] = "apache-2.0",
) -> None:
    """Release a checkpoint as a Hugging Face folder with a model card built from the run's reports.

    Examples:

      steelforge export runs/demo/pretrain/checkpoints runs/demo/release

      steelforge export runs/demo/pretrain/hf runs/demo/release --dtype bf16 --max-shard-size 500MB
    """
    from steelforge.export.hf import export_checkpoint

    result = export_checkpoint(
        checkpoint, out_dir, max_shard_size=max_shard_size, run_dir=run_dir, dtype=dtype, license_id=license_id
    )
    print_table(
        f"exported to {result.out_dir}",
        ["", ""],
        [
            ("source", f"{result.source.kind}: {result.source.path}"),
            ("run folder", str(result.source.run_dir or "not found (card without run reports)")),
            ("parameters", f"{result.parameters:,}"),
            ("stop token ids", str(result.stop_token_ids)),
            ("files", ", ".join(result.files)),
        ],
    )


def _sampling(max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int) -> Any:
    from steelforge.infer.chat import Sampling

    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 1:
        raise SteelforgeError(
            "sampling options out of range: need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --max-new-tokens >= 1"
        )
    return Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


@app.command("chat")
def chat_cmd(
    model_dir: Annotated[str, typer.Argument(help="An exported model folder (steelforge export, or a stage's hf/).")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="One-shot: answer this prompt (repeatable) as JSONL.")] = None,
    prompts_file: Annotated[str | None, typer.Option(help="One-shot: a JSONL ({\"prompt\": ...}) or text file of prompts.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="One-shot: write the JSONL answers here (default stdout).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    chat_template: Annotated[str | None, typer.Option(help="Jinja chat template (or a file) replacing the tokenizer's.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="No chat template: the model continues your text as is.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.9,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest tokens (0 = off).")] = 0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    int8: Annotated[bool, typer.Option("--int8", help="Dynamic int8 quantisation of the Linear layers (CPU).")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
) -> None:
    """Talk to a model in the terminal (streamed, multi-turn), or answer prompts in one shot as JSONL.

    In the chat: /reset, /system TEXT, /save PATH, /exit.

    Examples:

      steelforge chat runs/demo/release

      steelforge chat runs/demo/release --system "Answer briefly." --temperature 0 --int8

      steelforge chat runs/demo/release -p "What is 2+3?" -p "Name a prime." --temperature 0

      steelforge chat runs/moxin/release --raw --prompts-file prompts.jsonl -o answers.jsonl
    """
    from pathlib import Path

    from steelforge.infer.chat import ChatSession, interactive, one_shot, read_prompts_file, write_jsonl
    from steelforge.infer.generation import load_for_inference

    sampling = _sampling(max_new_tokens, temperature, top_p, top_k, seed)
    prompts = list(prompt or []) + (read_prompts_file(Path(prompts_file)) if prompts_file else [])
    loaded = load_for_inference(model_dir, int8=int8, chat_template=chat_template, threads=threads)
    if not raw and not loaded.chat_template:
        raise SteelforgeError(
            f"model '{model_dir}' has no chat template; pass --chat-template FILE or --raw for plain prompts"
        )
    if prompts:
        write_jsonl(one_shot(loaded, prompts, sampling, system=system, raw=raw), Path(output) if output else None)
        return
    interactive(ChatSession(loaded, sampling, system=system, raw=raw))


@app.command("serve")
def serve_cmd(
    model_dir: Annotated[str, typer.Argument(help="An exported model folder (steelforge export, or a stage's hf/).")],
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps the server local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require 'Authorization: Bearer KEY' (default: env STEELFORGE_API_KEY).")] = None,
    model_name: Annotated[str | None, typer.Option(help="The model id clients send (default: the folder name).")] = None,
    chat_template: Annotated[str | None, typer.Option(help="Jinja chat template (or a file) replacing the tokenizer's.")] = None,
    raw_chat: Annotated[bool, typer.Option("--raw-chat", help="Chat requests without a template: the last message is the prompt.")] = False,
    max_batch_size: Annotated[int, typer.Option(help="Most requests decoded together in one batch.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="How long the first request of a batch waits for company.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Waiting requests beyond this get 503.")] = 64,
    int8: Annotated[bool, typer.Option("--int8", help="Dynamic int8 quantisation of the Linear layers (CPU).")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, streaming), batching requests.

    Examples:

      steelforge serve runs/demo/release

      STEELFORGE_API_KEY=s3cret steelforge serve runs/demo/release --port 8080 --max-batch-size 32

      curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json'
        -d '{"model": "release", "messages": [{"role": "user", "content": "hi"}]}'
    """
    try:
        from steelforge.infer.server import serve
    except ModuleNotFoundError as exc:
        raise SteelforgeError(f"serving needs {exc.name}; install it with: pip install 'steelforge[serve]'") from None
    if max_batch_size < 1 or max_queue < 1 or batch_wait_ms < 0:
        raise SteelforgeError("need --max-batch-size >= 1, --max-queue >= 1 and --batch-wait-ms >= 0")
    serve(
        model_dir, host=host, port=port, api_key=api_key, model_name=model_name, int8=int8,
        chat_template=chat_template, raw_chat=raw_chat, max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms, max_queue=max_queue, threads=threads,
    )


@app.command("validate")
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe without running anything and print it fully resolved.

    Example:

      steelforge validate recipes/steel-1b/pretrain.yaml --set pretrain.max_steps=10
    """
    loaded = _load(recipe, set_)
    _preflight(loaded, loaded.stages())
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
