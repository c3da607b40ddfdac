"""What the Checkpoints screen's details pane says: plain functions, tested without a terminal.

A checkpoint's config, tokenizer, tensors by layer and files; a Hub model's downloads, likes,
licence and the parameters read from its remote safetensors headers; the recipe's compatibility
report; and the pane's text before any checkpoint is listed.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from mergetui.checkpoints.sources import CheckpointRow
from mergetui.errors import UserError
from mergetui.formatting import human_bytes, human_count


def summary_text(row: CheckpointRow) -> str:
    """The row's first line: name, where it comes from, where it is."""
    where = escape(str(row.path)) if row.path else "on the Hub (not downloaded)"
    return f"[b]{escape(row.name)}[/] · {row.origin} · {where}"


def empty_text(scanning: bool) -> str:
    """The pane while the list is empty: how to fill it."""
    from mergetui.checkpoints.hub import is_offline

    if scanning:
        return "[dim]Reading the local folders and the Hugging Face cache…[/]"
    hub = (
        "· the Hub is off (HF_HUB_OFFLINE=1): unset it to search the Hub\n"
        if is_offline()
        else "· type a name and press [b]enter[/] to search the Hub\n"
    )
    return (
        "[b]No checkpoints here yet.[/]\n"
        + hub
        + "· [b]f[/] adds a folder of local models (or start with "
        "[b]mergetui --models-dir DIR[/])\n"
        "· models downloaded with huggingface_hub (the HF cache) appear by themselves"
    )


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[yellow]no[/]"


def checkpoint_text(checkpoint: Any) -> list[str]:
    """Config summary, tokenizer, tensors grouped by layer, files."""
    from mergetui.checkpoints.layers import BLOCK_KINDS

    lines = [
        f"[b]architecture[/] {escape(str(checkpoint.architecture or '?'))} "
        f"({escape(str(checkpoint.model_type or '?'))}) · {checkpoint.num_layers} layers · "
        f"hidden {checkpoint.hidden_size} · vocab {checkpoint.vocab_size}",
        f"[b]parameters[/] {human_count(checkpoint.parameter_count)} "
        f"({checkpoint.parameter_count:,}) · dtype {checkpoint.dtype} · "
        f"{human_bytes(checkpoint.size_on_disk)} in {len(checkpoint.weight_files)} file(s)",
        f"[b]tokenizer[/] {_yes(checkpoint.has_tokenizer)} · [b]chat template[/] "
        f"{_yes(checkpoint.has_chat_template)} · tied embeddings "
        f"{'yes' if checkpoint.tied else 'no'}",
    ]
    for warning in checkpoint.warnings:
        lines.append(f"[yellow]! {escape(warning)}[/]")
    lines.append("[b]tensors by layer[/]")

    def describe(names: list[str]) -> str:
        parts = []
        for name in names:
            info = checkpoint.tensors[name]
            short = name.split(".")[-2] if name.endswith((".weight", ".bias")) else name
            parts.append(f"{short} {list(info.shape)}")
        return ", ".join(parts)

    if checkpoint.pre_layer:
        lines.append(f"  before: {escape(describe(checkpoint.pre_layer))}")
    for index, layer in enumerate(checkpoint.layers):
        groups = [
            f"{kind} {escape(describe(names))}"
            for kind in BLOCK_KINDS
            if (names := layer.get(kind))
        ]
        lines.append(f"  layer {index}: " + " · ".join(groups))
    if checkpoint.post_layer:
        lines.append(f"  after: {escape(describe(checkpoint.post_layer))}")
    lines.append(f"[b]files[/] {escape(', '.join(checkpoint.files))}")
    return lines


def details_text(row: CheckpointRow) -> str:
    """Everything the details pane says about one row (reads headers; local or from the Hub)."""
    from mergetui.checkpoints.inspect import open_checkpoint

    lines = [summary_text(row)]
    if row.origin == "hub" or row.hub is not None:
        lines.extend(hub_lines(row))
        if row.path is None:
            lines.extend(remote_lines(row))
            return "\n".join(lines)
    if row.path is None:
        return "\n".join(lines)
    if row.error:
        lines.append(f"[b $error]{escape(row.error)}[/]")
        return "\n".join(lines)
    if row.adapter is not None:
        lines.extend(adapter_lines(row.adapter))
        return "\n".join(lines)
    lines.extend(checkpoint_text(open_checkpoint(row.path)))
    return "\n".join(lines)


def adapter_lines(adapter: dict[str, Any]) -> list[str]:
    """A LoRA adapter's facts (`Adapter.to_dict()`): what `mergetui inspect ADAPTER` shows."""
    scaling = "alpha / sqrt(r), rsLoRA" if adapter["use_rslora"] else "alpha / r"
    base = adapter["base_model"] or "not named"
    return [
        f"[b]LoRA adapter[/] rank {adapter['rank']} · alpha {adapter['alpha']:g} · "
        f"scale {adapter['scale']:g} ({scaling})",
        f"[b]targets[/] {escape(', '.join(adapter['target_modules']) or '-')} "
        f"({adapter['lora_tensors']} tensors)",
        f"[b]modules to save[/] {escape(', '.join(adapter['modules_to_save']) or '-')}",
        f"[b]trained on[/] {escape(base)}",
        "[dim]use it in a recipe as a model's lora (base+adapter in mergekit YAML); "
        "adding it makes a model of its base with it[/]",
    ]


def hub_lines(row: CheckpointRow) -> list[str]:
    """What the Hub says about the model (asked again unless offline): downloads, likes, licence,
    gating, tags."""
    from mergetui.checkpoints.hub import is_offline, model_info

    model = row.hub
    if not is_offline():
        model = model_info(row.source, row.revision)
        row.hub = model
    if model is None:
        return []
    gated = {False: "no", "auto": "yes (automatic)", "manual": "yes (manual approval)"}
    lines = [
        f"[b]downloads[/] {model.downloads or 0:,} · [b]likes[/] {model.likes or 0:,} · "
        f"[b]licence[/] {escape(model.license or 'not stated')} · [b]gated[/] "
        f"{gated.get(model.gated, str(model.gated))}"
    ]
    if model.tags:
        lines.append(f"[b]tags[/] {escape(', '.join(model.tags[:12]))}")
    return lines


def remote_lines(row: CheckpointRow) -> list[str]:
    """A model not downloaded: its remote safetensors headers, read without downloading (the
    row's parameters, layers, dtype and size are filled in from them), or why they were not."""
    from mergetui.checkpoints.hub import is_offline, read_remote_checkpoint

    if is_offline():
        return ["[yellow]offline: the Hub's details need the network[/]"]
    try:
        checkpoint = read_remote_checkpoint(row.source, row.revision)
    except UserError as exc:
        lines = [f"[b $warning]headers not read:[/] {escape(exc.message)}"]
        if exc.fix:
            lines.append(f"[dim]fix: {escape(exc.fix)}[/]")
        return lines
    row.parameters = checkpoint.parameter_count
    row.layers = checkpoint.num_layers
    row.dtype = checkpoint.dtype
    row.size = checkpoint.size_on_disk
    row.architecture = checkpoint.architecture or row.architecture
    return [
        "[dim]read from the remote safetensors headers; nothing downloaded[/]",
        *checkpoint_text(checkpoint),
    ]


def compat_text(report: Any) -> str:
    lines = [
        f"[b]Compatibility of the recipe's models[/] (compared with {escape(str(report.reference))})"
    ]
    if report.ok:
        lines.append(
            f"[green]✓ {len(report.checked)} models: same architecture, tensor names and shapes[/]"
        )
    for problem in report.problems[:200]:
        lines.append(f"[yellow]✗[/] {escape(problem.model)}: {escape(problem.message)}")
    if len(report.problems) > 200:
        lines.append(f"… and {len(report.problems) - 200} more")
    for name, why in report.skipped.items():
        lines.append(f"[yellow]?[/] {escape(name)} not read: {escape(why)}")
    return "\n".join(lines)
