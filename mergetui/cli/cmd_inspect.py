"""`mergetui inspect PATH`: what a checkpoint holds, read from its headers in milliseconds.

PATH is a folder, a single .safetensors file (its header alone) or a Hub repo id. A repo id in the
local Hugging Face cache is read from there; otherwise (or with `--remote`) its config and
safetensors headers are read from the Hub with HTTP Range requests, without downloading the
weights. The summary answers the questions asked before a merge (architecture, layers, parameters,
dtypes, size, tokenizer and chat template, tied embeddings); `--layers` adds the per-layer map;
`--json` prints only JSON, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mergetui.cli.options import add_allow_bin_option, add_json_option

HELP = "show what a checkpoint holds (headers only, nothing loaded)"
DESCRIPTION = (
    "Summarise a checkpoint folder or a Hub repo id from its config and "
    "safetensors headers (a repo not in the local cache is read from the Hub's headers)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", metavar="PATH", help="checkpoint folder, .safetensors file, or Hub repo id"
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="read a Hub repo's headers from the Hub even when it is in the local cache",
    )
    parser.add_argument("--revision", help="branch, tag or commit of a cached Hub repo")
    add_json_option(parser)
    parser.add_argument("--layers", action="store_true", help="add the per-layer table")
    add_allow_bin_option(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mergetui.checkpoints.files import local_file
    from mergetui.checkpoints.inspect import open_checkpoint, open_weight_file
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id
    from mergetui.checkpoints.lora import is_adapter_folder, open_adapter
    from mergetui.checkpoints.sources import is_checkpoint_dir
    from mergetui.errors import UserError

    if not args.remote:
        file = local_file(args.path)
        if file is not None:  # `inspect path/model.safetensors`: that file's header
            return _show(open_weight_file(file), args)
        if "+" in args.path and not Path(args.path).expanduser().exists():
            return _show_with_adapter(args)  # `inspect BASE+ADAPTER`, as a recipe names it
    folder = None if args.remote else find_local(args.path, args.revision)
    if folder is not None and is_adapter_folder(folder) and not is_checkpoint_dir(folder):
        return _show_adapter(open_adapter(folder, allow_bin=args.allow_bin), args)
    if folder is None:
        if looks_like_hub_id(args.path):
            return _show(_read_remote(args.path, args.revision), args)
        raise UserError(
            "checkpoint folder not found",
            where=args.path,
            fix="check the path (relative paths start from the current folder)",
        )
    return _show(open_checkpoint(folder, allow_bin=args.allow_bin), args)


def _show(checkpoint: Any, args: argparse.Namespace) -> int:
    if args.json:
        sys.stdout.write(json.dumps(checkpoint.to_dict(), indent=2) + "\n")
        return 0
    _print_summary(checkpoint, source=args.path)
    if args.layers:
        _print_layers(checkpoint)
    return 0


def _show_adapter(adapter: Any, args: argparse.Namespace) -> int:
    """An adapter folder: its kind, rank, alpha, scale and targets."""
    if args.json:
        sys.stdout.write(json.dumps(adapter.to_dict(), indent=2) + "\n")
        return 0
    from mergetui.cli.output import console

    console().print(_adapter_table(adapter))
    return 0


def _show_with_adapter(args: argparse.Namespace) -> int:
    """`BASE+ADAPTER`: the base's summary, the adapter's facts, and whether it fits the base."""
    from rich.markup import escape

    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.checkpoints.lora import check_adapter, open_adapter
    from mergetui.cli.output import console
    from mergetui.errors import UserError
    from mergetui.recipe.paths import locate_adapter, locate_model

    source, _, lora = args.path.partition("+")
    found = locate_model(source, args.revision, None)
    adapter_found = locate_adapter(lora, None)
    for what, name, where in (("model", source, found), ("adapter", lora, adapter_found)):
        if where is None:
            raise UserError(
                f"{what} {name} is not a local folder, nor in the Hugging Face cache",
                where=args.path,
                fix=f"check the path, or download it first (mergetui pull {name})",
            )
    assert found is not None and adapter_found is not None
    checkpoint = open_checkpoint(found[0], allow_bin=args.allow_bin)
    adapter = open_adapter(adapter_found[0], allow_bin=args.allow_bin)
    misfit, warnings = check_adapter(adapter, checkpoint, source)
    if args.json:
        data = checkpoint.to_dict()
        problem = misfit.message if misfit is not None else None
        data["adapter"] = {**adapter.to_dict(), "fits": misfit is None, "problem": problem}
        data["warnings"] = [*data.get("warnings", []), *warnings]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    _print_summary(checkpoint, source=source)
    out = console()
    out.print(_adapter_table(adapter))
    for warning in warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}")
    if misfit is not None:
        raise UserError(misfit.message, where=args.path, fix=misfit.fix)
    out.print("[green]the adapter fits this model[/] (every target's shape matches)")
    return 0


def _adapter_table(adapter: Any) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.formatting import human_bytes

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    scaling = "alpha / sqrt(r), rsLoRA" if adapter.use_rslora else "alpha / r"
    ranks = sorted({module.rank for module in adapter.modules.values()})
    table.add_row("adapter", escape(f"{adapter.path} (LoRA)"))
    table.add_row("rank", str(adapter.rank) + (f" (per module: {ranks})" if len(ranks) > 1 else ""))
    table.add_row("alpha", f"{adapter.alpha:g} (scale {adapter.scale:g} = {scaling})")
    table.add_row("targets", escape(", ".join(adapter.target_modules) or "-"))
    table.add_row("updated tensors", str(len(adapter.modules)))
    table.add_row("modules to save", escape(", ".join(adapter.modules_to_save) or "-"))
    table.add_row("base model", escape(adapter.base_model or "not named"))
    table.add_row("size on disk", f"{human_bytes(adapter.size_on_disk)} in {adapter.file.name}")
    return table


def _read_remote(repo_id: str, revision: str | None) -> Any:
    """Headers from the Hub; when the Hub is out of reach, say that the model is not local.
    A Hub that did not answer in time says so itself: how to wait longer, or go offline."""
    from mergetui.checkpoints.hub import HubOffline, HubTimeout, read_remote_checkpoint
    from mergetui.errors import UserError

    try:
        return read_remote_checkpoint(repo_id, revision)
    except HubTimeout:
        raise
    except HubOffline as exc:
        raise UserError(
            "not a local folder, and not in the Hugging Face cache"
            + (f" at revision {revision}" if revision else "")
            + f"; the Hub could not be asked ({exc.message})",
            where=repo_id,
            fix=f"download it first when online (mergetui pull {repo_id}, or huggingface-cli "
            f"download {repo_id}), or give the path of a folder",
        ) from None


def _print_summary(checkpoint: Any, *, source: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.cli.output import console
    from mergetui.formatting import human_bytes, human_count

    def yes_no(flag: bool) -> str:
        return "[green]yes[/]" if flag else "[yellow]no[/]"

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    remote = getattr(checkpoint, "repo_id", "")
    if remote:
        table.add_row(
            "checkpoint", escape(f"{remote} on the Hub (headers only, nothing downloaded)")
        )
        if checkpoint.revision:
            table.add_row("commit", escape(checkpoint.revision))
    else:
        table.add_row("checkpoint", escape(str(checkpoint.path)))
    if not remote and source != str(checkpoint.path):
        table.add_row("source", escape(source))
    table.add_row(
        "architecture",
        escape(f"{checkpoint.architecture or 'unknown'} ({checkpoint.model_type or '?'})"),
    )
    table.add_row("layers", str(checkpoint.num_layers))
    table.add_row(
        "parameters", f"{human_count(checkpoint.parameter_count)} ({checkpoint.parameter_count:,})"
    )
    table.add_row(
        "dtypes", ", ".join(f"{dtype} x{count}" for dtype, count in checkpoint.dtypes.items())
    )
    table.add_row(
        "size on the Hub" if remote else "size on disk",
        f"{human_bytes(checkpoint.size_on_disk)} in {len(checkpoint.weight_files)} "
        f"{checkpoint.format} file{'s' if len(checkpoint.weight_files) != 1 else ''}",
    )
    table.add_row("hidden / vocab", f"{checkpoint.hidden_size} / {checkpoint.vocab_size}")
    table.add_row("tokenizer", yes_no(checkpoint.has_tokenizer))
    table.add_row("chat template", yes_no(checkpoint.has_chat_template))
    tied = "yes (no lm_head tensor)" if checkpoint.tied else "no"
    table.add_row("tied embeddings", tied)
    table.add_row("before layers", escape(", ".join(checkpoint.pre_layer) or "-"))
    table.add_row("after layers", escape(", ".join(checkpoint.post_layer) or "-"))
    out = console()
    out.print(table)
    for warning in checkpoint.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}")


def _module_name(name: str) -> str:
    """The module a tensor belongs to: `model.layers.3.self_attn.q_proj.weight` -> `q_proj`."""
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        return parts[-2]
    return parts[-1]


def _print_layers(checkpoint: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.checkpoints.layers import BLOCK_KINDS
    from mergetui.cli.output import console
    from mergetui.formatting import human_count

    kinds = [k for k in BLOCK_KINDS if any(layer.get(k) for layer in checkpoint.layers)]
    table = Table(title="layers", show_lines=False, expand=False)
    table.add_column("layer", justify="right")
    for kind in kinds:
        table.add_column(kind)
    table.add_column("params", justify="right")
    for index, layer in enumerate(checkpoint.layers):
        cells = []
        for kind in kinds:
            names = layer.get(kind, [])
            cells.append(escape(" ".join(dict.fromkeys(_module_name(n) for n in names))))
        params = sum(checkpoint.tensors[n].numel for n in checkpoint.layer_tensors(index))
        table.add_row(str(index), *cells, human_count(params))
    console().print(table)
