"""`steelforge store ...`: look into, verify, extend and decode token stores.

Top-level imports stay light (typer and stdlib); numpy, matplotlib and tokenizers load inside
the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

store_app = typer.Typer(
    name="store",
    help="Token store tools: info, verify, append, inspect.\n\n"
    "Examples:\n\n"
    "  steelforge store info runs/demo/store --plot tokens.png\n\n"
    "  steelforge store verify runs/demo/store\n\n"
    "  steelforge store append runs/demo/store runs/extra/store\n\n"
    "  steelforge store inspect runs/demo/store --samples 2",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

StoreArg = Annotated[Path, typer.Argument(help="A token store folder (the one holding manifest.json).")]


@store_app.command()
def info(
    store: StoreArg,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the token share of each source as a PNG here.")
    ] = None,
) -> None:
    """Sources, tokens, documents and shards of a store (and optionally a PNG of the token mix).

    Examples:

      steelforge store info runs/demo/store

      steelforge store info runs/steel-1b/store --plot store_tokens.png
    """
    from steelforge.reporting import console, print_table
    from steelforge.tokens.store import TokenStore

    opened = TokenStore(store)
    stats = opened.source_stats()
    total = sum(s["tokens"] for s in stats.values()) or 1
    rows = [
        (name, s["tokens"], f"{100 * s['tokens'] / total:.1f}%", s["documents"], s["shards"])
        for name, s in stats.items()
    ]
    rows.append(
        (
            "total",
            sum(s["tokens"] for s in stats.values()),
            "100%",
            sum(s["documents"] for s in stats.values()),
            len(opened.shards),
        )
    )
    m = opened.manifest
    print_table(f"token store {store}", ["source", "tokens", "share", "documents", "shards"], rows)
    console.print(
        f"tokenizer {m.tokenizer_name} (fingerprint {m.tokenizer_fingerprint[:12]}), separator "
        f"{m.separator_token!r} = {m.separator_id}, BOS {m.bos_token!r} = {m.bos_id}, "
        f"store fingerprint {opened.fingerprint()}"
    )
    if plot is not None:
        draw_token_distribution(stats, plot, title=f"Tokens by source — {store.name}")
        console.print(f"wrote {plot}")


def draw_token_distribution(stats: dict[str, dict[str, int]], path: Path, title: str) -> None:
    """A pie of each source's token share with absolute counts (cf. Steel-LLM's Figure 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    tokens = [stats[n]["tokens"] for n in names]
    fig, (ax_pie, ax_bar) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax_pie.pie(tokens, labels=names, autopct="%1.1f%%", startangle=90, counterclock=False)
    ax_pie.set_title("share of tokens")
    ax_bar.barh(names, tokens)
    ax_bar.set_xlabel("tokens")
    for i, t in enumerate(tokens):
        ax_bar.text(t, i, f" {t:,}", va="center", fontsize=8)
    ax_bar.set_xlim(0, max(tokens, default=1) * 1.25)
    ax_bar.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@store_app.command()
def verify(store: StoreArg) -> None:
    """Re-hash every shard against the manifest; names each changed, truncated or missing shard.

    Exits with code 1 when any shard is bad.

    Example:

      steelforge store verify runs/demo/store
    """
    from steelforge.reporting import console
    from steelforge.tokens.store import TokenStore

    opened = TokenStore(store, check_sizes=False)
    problems = opened.verify()
    for problem in problems:
        console.print(f"[bold red]bad:[/] {problem}")
    if problems:
        console.print(
            f"[bold red]{len(problems)} problem(s)[/] in {store}; restore those shards or re-run `steelforge pack`"
        )
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {len(opened.shards)} shard(s) match their md5 in {store}")


@store_app.command()
def append(
    store: StoreArg,
    new_shards: Annotated[
        list[Path], typer.Argument(help="Store folders, or .u32 shards inside packed stores.")
    ],
) -> None:
    """Add shards of other stores (same tokenizer) to a store, e.g. mid-training.

    A shard whose md5 is already in the store, or a different tokenizer, is refused before
    anything is copied. A training run resumed afterwards reshuffles its untrained remainder
    together with the new data.

    Examples:

      steelforge store append runs/main/store runs/extra/store

      steelforge store append runs/main/store runs/extra/store/web-00003.u32
    """
    from steelforge.reporting import print_table
    from steelforge.tokens.store import append_shards

    added = append_shards(store, new_shards)
    print_table(
        f"appended {len(added)} shard(s) to {store}",
        ["shard", "source", "tokens", "documents"],
        [(s.file, s.source, s.tokens, s.documents) for s in added],
    )


@store_app.command()
def inspect(
    store: StoreArg,
    samples: Annotated[int, typer.Option("--samples", "-n", help="Samples to decode per source.")] = 2,
    seq_len: Annotated[int, typer.Option(help="Sample length in tokens.")] = 64,
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer name or folder (default: the store's).")
    ] = None,
) -> None:
    """Decode the first samples of each source back to text (special tokens shown).

    Examples:

      steelforge store inspect runs/demo/store

      steelforge store inspect runs/demo/store --source zh --samples 3 --seq-len 256
    """
    from steelforge.errors import DataError
    from steelforge.reporting import console
    from steelforge.tokenizers import load_tokenizer
    from steelforge.tokens.loader import open_stores, source_streams

    opened = open_stores([store])
    tok = load_tokenizer(tokenizer or opened[0].manifest.tokenizer_name)
    streams = source_streams(opened)
    if source is not None and source not in streams:
        raise DataError(f"store '{store}' has no source '{source}'; it has {sorted(streams)}")
    for name, stream in streams.items():
        if source is not None and name != source:
            continue
        n = min(samples, max(0, (stream.tokens - 1) // seq_len))
        console.rule(f"source {name}: {stream.tokens:,} tokens")
        for i in range(n):
            ids = stream.read(i * seq_len, seq_len + 1).tolist()
            console.print(f"[bold]sample {i}[/] (tokens {i * seq_len}..{i * seq_len + seq_len}):")
            console.print(tok.decode(ids, skip_special_tokens=False), markup=False, highlight=False)
