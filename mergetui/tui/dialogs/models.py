"""Add a model: a local folder or a Hub id, and the short name the recipe calls it.

`model_source` and `suggest_model_name` are the rules the Checkpoints screen's `a` follows too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.widgets import Input, Label, Static

from mergetui.tui.dialogs.base import DialogScreen
from mergetui.tui.dialogs.paths import PathInput


@dataclass
class ModelChoice:
    name: str
    source: str
    lora: str | None = None  # a LoRA adapter typed as `model+adapter` (docs/lora.md)


class AddModelDialog(DialogScreen):
    """A model by local path or Hub id, with the short name the recipe will call it."""

    title_text = "Add a model"

    def __init__(self, taken: set[str]) -> None:
        super().__init__()
        self.taken = taken

    def compose_body(self) -> ComposeResult:
        yield Label("Local folder or Hugging Face id (org/name)")
        yield PathInput(
            placeholder="./models/my-finetune  or  mistralai/Mistral-7B-v0.1", id="source"
        )
        yield Label("Name in the recipe")
        yield Input(placeholder="derived from the path", id="name")
        yield Static(
            "enter adds it · tab completes a path · escape cancels",
            classes="hint",
            id="message",
        )

    def on_mount(self) -> None:
        self.query_one("#source", Input).focus()

    @on(Input.Changed, "#source")
    def suggest_name(self, event: Input.Changed) -> None:
        self.query_one("#name", Input).placeholder = (
            suggest_model_name(event.value, self.taken) or "name"
        )

    def _refuse(self, text: str, field: Input) -> None:
        message = self.query_one("#message", Static)
        message.update(text)
        message.add_class("error")
        field.focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        """One enter, in either field, adds the model (named from its path unless a name is
        typed); a folder that does not exist is refused here, not later by the validator."""
        source_input = self.query_one("#source", Input)
        name_input = self.query_one("#name", Input)
        source, lora, problem = model_reference(source_input.value)
        if source is None:
            self._refuse(problem, source_input)
            return
        name = name_input.value.strip() or suggest_model_name(lora or source, self.taken)
        if not name:
            self._refuse("give the model a name", name_input)
            return
        if name in self.taken:
            self._refuse(
                f"{name!r} is already a model in this recipe: choose another name", name_input
            )
            return
        self.dismiss(ModelChoice(name, source, lora))


def model_source(text: str) -> tuple[str | None, str]:
    """What the recipe stores for a typed model source, or None and why it is refused.

    One form for every local folder: its absolute path (typed relative to the working folder, as
    the completion shows it, or with `~`), the form the Checkpoints screen stores too, so the recipe
    reads the same wherever it is saved. A Hub id stays as typed: `org/name`, or a bare name only
    when that repo is in the local Hugging Face cache. Anything else is a folder that is not there.
    """
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id

    typed = text.strip()
    if not typed:
        return None, "the model's folder or Hub id is needed"
    path = Path(typed).expanduser()
    if path.is_dir():
        return str(path.resolve()), ""
    if path.exists():
        return None, f"{typed} is a file: give the checkpoint's folder"
    if looks_like_hub_id(typed) and ("/" in typed or find_local(typed) is not None):
        return typed, ""
    where = "" if path.is_absolute() else f" in {Path.cwd()}"
    return None, f"no folder {typed}{where} (a Hub id is written org/name): check the path"


def model_reference(text: str) -> tuple[str | None, str | None, str]:
    """`model_source` of a typed model, which may carry a LoRA adapter as mergekit writes it
    (`model+adapter`, each a folder or a Hub id): (source, lora or None, "") or (None, None, why)."""
    typed = text.strip()
    model, plus, adapter = typed.partition("+")
    if not plus or Path(typed).expanduser().exists():
        source, problem = model_source(typed)
        return source, None, problem
    if "+" in adapter:
        return None, None, "write model+adapter, with one '+'"
    source, problem = model_source(model)
    if source is None:
        return None, None, problem
    lora, problem = model_source(adapter)
    if lora is None:
        return None, None, f"adapter: {problem}"
    return source, lora, ""


def suggest_model_name(source: str, taken: set[str]) -> str:
    """The recipe's short name for a path or Hub id (the core's rule), made unique."""
    from mergetui.recipe.yaml_import import derive_model_name

    if not source.strip():
        return ""
    stem = derive_model_name(source.rpartition("+")[2] or source)  # model+adapter: the adapter
    name, counter = stem, 2
    while name in taken:
        name = f"{stem}-{counter}"
        counter += 1
    return name
