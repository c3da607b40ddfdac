"""`mergetui chat MODEL`: talk to a checkpoint. With `--prompt`, print one reply and exit.

Without `--prompt` the app opens on its Chat screen with MODEL loading. With it, the reply streams to
stdout as it is generated (status lines go to stderr, so `mergetui chat m --prompt hi > reply.txt`
captures the reply alone). `--device auto` picks a device with room and says so when it falls back;
`--dtype auto` keeps the checkpoint's dtype on a GPU and, on a CPU without fast bf16 kernels, loads
a 16-bit checkpoint in float32 (mergetui.chat.dtype). A pytorch_model.bin is read only with
`--allow-bin`.
"""

from __future__ import annotations

import argparse
import sys

from mergetui.cli.options import (
    add_load_options,
    add_trust_remote_code_option,
    checked_device_and_dtype,
)

HELP = "chat with a checkpoint (a merge, or any local model)"
DESCRIPTION = (
    "Chat with a checkpoint folder (or a downloaded Hub id): in the app, or one "
    "reply on the command line with --prompt."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint folder, or a Hub id in the Hugging Face cache")
    parser.add_argument("--prompt", help="send this message, print the reply and exit")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (a device with room), cpu, cuda, cuda:N or mps"
    )
    add_load_options(parser)
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy"
    )
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    parser.add_argument("--seed", type=int, help="seed for sampling (reproducible replies)")
    add_trust_remote_code_option(parser, "the model")


def run(args: argparse.Namespace) -> int:

    device, dtype = checked_device_and_dtype(args)
    if args.prompt is None:
        from mergetui.chat.loader import resolve_checkpoint
        from mergetui.tui.app import run_app

        folder = resolve_checkpoint(args.model)
        options = {
            "device": device,
            "dtype": dtype,
            "allow_bin": args.allow_bin,
            "trust_remote_code": args.trust_remote_code,
        }
        return run_app(None, chat_model=str(folder), chat_options=options)
    return _one_reply(args, device, dtype)


def _one_reply(args: argparse.Namespace, device: str, dtype: str) -> int:
    from rich.markup import escape

    from mergetui.chat.generate import GenerationSettings, generate_reply
    from mergetui.chat.loader import load_for_chat
    from mergetui.chat.prompt import conversation
    from mergetui.cli.output import console_err

    settings = GenerationSettings(
        system_prompt=args.system,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    settings.check()
    err = console_err()
    with err.status("loading the model…") as status:
        loaded = load_for_chat(
            args.model,
            device=device,
            dtype=dtype,
            trust_remote_code=args.trust_remote_code,
            allow_bin=args.allow_bin,
            on_progress=lambda stage, f: status.update(f"{escape(stage)} ({f:.0%})"),
        )
    if loaded.message:
        err.print(f"[yellow]note:[/] {escape(loaded.message)}", soft_wrap=True)
    err.print(
        f"[dim]{escape(loaded.describe())} ({escape(loaded.dtype_reason)})[/]", soft_wrap=True
    )

    written = 0

    def show(text: str) -> None:
        nonlocal written
        # Stream what is new; the reply only grows (a stop string is cut before it is shown).
        if len(text) > written:
            sys.stdout.write(text[written:])
            sys.stdout.flush()
            written = len(text)

    reply = generate_reply(
        loaded, conversation([], args.prompt, args.system), settings, on_text=show
    )
    if len(reply.text) > written:
        sys.stdout.write(reply.text[written:])
    sys.stdout.write("\n")
    sys.stdout.flush()
    finish = {
        "end": "",
        "length": ", hit --max-new-tokens",
        "context": ", the model's context window is full",
        "stopped": ", stopped",
    }.get(reply.finish, "")
    err.print(
        f"[dim]{reply.tokens} tokens in {reply.seconds:.1f} s "
        f"({reply.tokens_per_second:.1f} tokens/s, {loaded.dtype}){finish}[/]"
    )
    return 0
