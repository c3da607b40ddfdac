"""`mergetui eval MODEL...`: perplexity of each model on a text, as a table.

The quick check of a merge: a healthy model scores close to its parents, a broken merge far above
them. The text is the bundled English sample unless `--text FILE` names another. Models are loaded
one at a time (only one is in memory at once).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mergetui.cli.options import (
    add_load_options,
    add_trust_remote_code_option,
    checked_device_and_dtype,
)

HELP = "perplexity of one or more checkpoints on a text (a quick merge check)"
DESCRIPTION = (
    "Score each model's perplexity on a text (the bundled sample by default) and "
    "print a table: a broken merge shows at a glance."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="checkpoint folders (or downloaded Hub ids)")
    parser.add_argument(
        "--text", type=Path, help="a UTF-8 text file to score instead of the sample"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_load_options(parser)
    parser.add_argument(
        "--window", type=int, help="tokens per window (default: the model's context, at most 1024)"
    )
    add_trust_remote_code_option(parser, "the models")


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.chat.loader import load_for_chat
    from mergetui.chat.perplexity import perplexity, read_text, sample_text
    from mergetui.cli.output import console, console_err, report_error
    from mergetui.errors import UserError

    device, dtype = checked_device_and_dtype(args)
    text, text_name = read_text(args.text) if args.text else sample_text()
    err = console_err()
    table = Table(title=f"perplexity on the {escape(text_name)} (lower is better)")
    table.add_column("model", overflow="fold")
    table.add_column("perplexity", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("device")
    table.add_column("dtype")
    table.add_column("time", justify="right")
    failures = 0
    for source in args.models:
        try:
            with err.status(f"loading {escape(source)}…") as status:
                loaded = load_for_chat(
                    source,
                    device=device,
                    dtype=dtype,
                    trust_remote_code=args.trust_remote_code,
                    allow_bin=args.allow_bin,
                    on_progress=lambda stage, f, source=source: status.update(
                        f"{escape(source)}: {escape(stage)} ({f:.0%})"
                    ),
                )
                status.update(f"scoring {escape(source)}…")
                result = perplexity(loaded, text, text_name=text_name, window=args.window)
            loaded.unload()
        except UserError as exc:
            failures += 1
            report_error(exc)
            table.add_row(escape(source), "[red]not scored[/]", "", "", "", "")
            continue
        table.add_row(
            escape(source),
            f"{result.perplexity:.2f}",
            str(result.tokens),
            loaded.device,
            loaded.dtype,
            f"{result.seconds:.1f} s",
        )
    console().print(table)
    return 1 if failures else 0
