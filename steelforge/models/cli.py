"""`steelforge model ...`: look at a model before training it.

Top-level imports stay light (typer and stdlib); torch and transformers load inside the commands.
"""

from __future__ import annotations

from typing import Annotated

import typer

model_app = typer.Typer(
    name="model",
    help="Model tools: architecture, parameter counts and FLOPs of a preset or a model folder.\n\n"
    "Examples:\n\n"
    "  steelforge model info steel-1b\n\n"
    "  steelforge model info moxin-7b --seq-len 4096\n\n"
    "  steelforge model info path/to/hf_or_steel_folder",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@model_app.command()
def info(
    source: Annotated[
        str, typer.Argument(help="A preset (steel-1b, moxin-7b, tiny-steel, tiny-moxin) or a folder.")
    ],
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="Sequence length for the FLOPs per token.")
    ] = 2048,
) -> None:
    """Architecture, parameters (embeddings vs the rest) and training FLOPs per token.

    The model is built on the meta device: nothing is allocated, so the 7B preset answers at once.

    Examples:

      steelforge model info steel-1b

      steelforge model info tiny-steel --seq-len 256

      steelforge model info runs/demo/export
    """
    from steelforge.models.flops import flops_per_token
    from steelforge.models.loading import build_config, load_model
    from steelforge.reporting import print_table

    config = build_config(source)
    model = load_model(config, on_meta=True)
    embeddings = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    head_params = (
        0 if head is None or head.weight is model.get_input_embeddings().weight else head.weight.numel()
    )
    total = sum(p.numel() for p in model.parameters())
    rows: list[tuple[str, object]] = [
        ("class", type(model).__name__),
        ("layers", config.num_hidden_layers),
        ("hidden size", config.hidden_size),
        ("heads / KV heads", f"{config.num_attention_heads} / {config.num_key_value_heads}"),
        ("vocabulary", config.vocab_size),
        ("rope theta", config.rope_parameters.get("rope_theta") if config.rope_parameters else None),
        ("sliding window", getattr(config, "sliding_window", None)),
    ]
    if hasattr(config, "FFN_type"):
        rows += [
            ("FFN", f"{config.FFN_type} ({config.mlp_type} experts, {config.expert_intermediate_size} wide)"),
            ("experts x slots", f"{config.n_experts} x {config.slots_per_expert}"),
            ("Soft-MoE dispatch", config.softmoe_dispatch),
        ]
    else:
        rows.append(("FFN", f"SwiGLU, {config.intermediate_size} wide"))
    rows += [
        ("parameters", total),
        ("  embedding", embeddings),
        ("  output head", head_params),
        ("  rest (non-embedding)", total - embeddings - head_params),
        (f"training FLOPs/token @ {seq_len}", flops_per_token(config, seq_len, training=True)),
        (f"forward FLOPs/token @ {seq_len}", flops_per_token(config, seq_len, training=False)),
    ]
    print_table(f"model {source}", ["", "value"], rows)
