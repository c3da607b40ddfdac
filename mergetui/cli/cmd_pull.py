"""`mergetui pull REPO_ID`: download a Hub model into the Hugging Face cache, with progress.

Only what a merge needs is fetched by default (safetensors, JSON, tokenizer files and chat
templates); `--include` picks other patterns. Files already cached are skipped, so pulling again
resumes. The first Ctrl-C cancels at once, even while the Hub is silent: the file being fetched is
dropped, the snapshot stays marked incomplete (never mistaken for a model) until a later pull
finishes it, and the exit status is 130. Waits are bounded by HF_HUB_ETAG_TIMEOUT and
HF_HUB_DOWNLOAD_TIMEOUT (see `checkpoints.hub.net`).
"""

from __future__ import annotations

import argparse

HELP = "download a Hub model into the local cache (weights, configs, tokenizer)"
DESCRIPTION = "Download a Hugging Face Hub model into the local Hugging Face cache."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo_id", metavar="REPO_ID", help="org/name")
    parser.add_argument("--revision", help="branch, tag or commit (default main)")
    parser.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="file pattern to fetch (repeatable; default: *.safetensors, *.json and the tokenizer)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from mergetui.cli.output import console, console_err
    from mergetui.cli.transfers import pull_with_progress
    from mergetui.errors import CancelledError

    try:
        path = pull_with_progress(
            args.repo_id, revision=args.revision, include=args.include, err=console_err()
        )
    except CancelledError:
        console_err().print(
            "[yellow]Cancelled:[/] the partial file was removed; pull again to resume."
        )
        return 130
    console().print(
        f"[green]Downloaded[/] {escape(args.repo_id)} to {escape(str(path))}", soft_wrap=True
    )
    return 0
