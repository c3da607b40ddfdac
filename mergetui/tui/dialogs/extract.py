"""Extract a LoRA adapter from a fine-tune: the base, the output folder, rank, energy, embeddings.

Opened by the Checkpoints screen's `e` on a local checkpoint (the fine-tune). Every field is checked
here, with a message beside it, before anything runs: the numbers (as `mergetui extract-lora`
checks its flags), the base (a folder, or a Hub id in the HF cache: nothing is downloaded), and the
output (a new folder, or one extract-lora wrote, replaced only after a second enter). The dialog
answers an `ExtractRequest`; the screen runs it (mergetui/tui/checkpoints/extract.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Static

from mergetui.merge.extract_plan import DEFAULT_RANK, MAX_RANK, ExtractOptions
from mergetui.tui.dialogs.base import DialogScreen
from mergetui.tui.dialogs.paths import PathInput


@dataclass(frozen=True)
class ExtractRequest:
    """What to run: `plan_extraction(finetuned, base, options)` then `run_extraction(out)`."""

    finetuned: Path
    finetuned_source: str  # what the adapter's card names (a folder's path, or a Hub id)
    base: Path
    base_source: str
    out: Path
    options: ExtractOptions
    force: bool = False  # `out` is an adapter extract-lora wrote, and the user said replace it


class FieldError(ValueError):
    """A field's value refused: which field, and the message shown under the fields."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_rank(text: str) -> int:
    """The rank field: a whole number from 1 to MAX_RANK."""
    text = text.strip().replace("_", "")
    if not text:
        raise FieldError("ex-rank", f"the rank is empty: a whole number, e.g. {DEFAULT_RANK}")
    try:
        rank = int(text)
    except ValueError:
        raise FieldError(
            "ex-rank", f"the rank must be a whole number from 1 to {MAX_RANK}, not {text!r}"
        ) from None
    if not 1 <= rank <= MAX_RANK:
        raise FieldError(
            "ex-rank",
            f"the rank must be from 1 to {MAX_RANK}, not {rank} (each module's rank is also "
            "capped by its shorter side)",
        )
    return rank


def parse_energy(text: str) -> float | None:
    """The energy field: empty (every rank up to the largest), or a share 0 < F <= 1."""
    text = text.strip()
    if not text:
        return None
    share = text.endswith("%")
    try:
        energy = float(text.removesuffix("%"))
    except ValueError:
        raise FieldError(
            "ex-energy", f"the energy share must be a number above 0 and at most 1, not {text!r}"
        ) from None
    if share:
        energy /= 100
    if not (math.isfinite(energy) and 0 < energy <= 1):
        raise FieldError(
            "ex-energy",
            f"the energy must be above 0 and at most 1, not {text} (0.9 keeps 90%)",
        )
    return energy


def locate_base(text: str, finetuned: Path) -> tuple[Path, str]:
    """The base's folder and the name the adapter gives it: a folder (its full path), or a Hub id
    already in the HF cache (the id)."""
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id

    text = text.strip()
    if not text:
        raise FieldError("ex-base", "which base was it fine-tuned from? a folder or a Hub id")
    folder = find_local(text)
    if folder is None:
        if looks_like_hub_id(text) and not Path(text).expanduser().exists():
            raise FieldError(
                "ex-base",
                f"no folder {text} here, and no Hub model {text} in the HF cache: give the "
                "base's folder, or download it first (search the Hub in the filter, then d)",
            )
        raise FieldError("ex-base", f"no checkpoint folder at {text}")
    folder = Path(folder)
    if folder.resolve() == finetuned.resolve():
        raise FieldError("ex-base", "the base is the fine-tune itself: pick the model it came from")
    hub_id = looks_like_hub_id(text) and not Path(text).expanduser().is_dir()
    return folder, text if hub_id else str(folder.resolve())


def check_out(text: str) -> tuple[Path, str | None]:
    """The output folder, and why it needs a confirmation (an adapter extract-lora wrote) or None;
    a folder that is anything else is refused."""
    from mergetui.merge.extract_run import not_an_extracted_adapter

    text = text.strip()
    if not text:
        raise FieldError("ex-out", "where should the adapter go? a new folder")
    out = Path(text).expanduser().absolute()
    if not out.exists() and not out.is_symlink():
        return out, None
    if not out.is_dir() or out.is_symlink():
        raise FieldError("ex-out", f"{out} exists and is not a folder: choose a new folder")
    why = not_an_extracted_adapter(out)
    if why is not None:
        raise FieldError(
            "ex-out", f"{out} already exists and {why}: it is never replaced; choose a new folder"
        )
    if not any(out.iterdir()):
        return out, f"{out} is an empty folder: enter again writes the adapter into it"
    return out, f"{out} holds an adapter extract-lora wrote: enter again replaces it"


HINT = "enter extracts · escape closes · tab completes a path"


class ExtractDialog(DialogScreen):
    """The fields, checked on enter (or the button); answers an `ExtractRequest`, or None."""

    title_text = "Extract a LoRA adapter"
    DEFAULT_CSS = """
    ExtractDialog #ex-numbers { height: auto; }
    ExtractDialog #ex-numbers > Vertical { width: 1fr; height: auto; }
    ExtractDialog #ex-numbers > Vertical:first-child { margin-right: 2; }
    ExtractDialog #ex-message { height: auto; margin-top: 1; }
    ExtractDialog #ex-finetuned { color: $text-muted; }
    """

    def __init__(
        self, finetuned: Path, finetuned_source: str, base: str, out_for_rank: Callable[[int], str]
    ) -> None:
        super().__init__()
        self.finetuned = finetuned
        self.finetuned_source = finetuned_source
        self.base = base
        self.out_for_rank = out_for_rank
        self.auto_out = out_for_rank(DEFAULT_RANK)  # follows the rank until the user edits it
        self.confirmed: Path | None = None  # an existing output the user said to replace

    def compose_body(self) -> ComposeResult:
        from mergetui.tui.paths_text import short_path

        source = self.finetuned_source
        shown = short_path(source) if Path(source).is_absolute() else source
        yield Label(f"Fine-tune  {shown}", id="ex-finetuned")
        yield Label("Base it was trained from (a folder, or a Hub id in the HF cache)")
        yield PathInput(
            self.base, placeholder="e.g. ../base or org/base-model", id="ex-base", compact=True
        )
        yield Label("Output folder (a new one)")
        yield PathInput(self.auto_out, id="ex-out", compact=True)
        with Horizontal(id="ex-numbers"):
            with Vertical():
                yield Label(f"Rank, the largest (1..{MAX_RANK})")
                yield Input(str(DEFAULT_RANK), id="ex-rank", compact=True)
            with Vertical():
                yield Label("Energy to keep (0 < F <= 1)")
                yield Input(placeholder="optional, e.g. 0.9", id="ex-energy", compact=True)
        yield Checkbox(
            "decompose the embeddings too (else saved whole)", id="ex-embed", compact=True
        )
        yield Static(HINT, id="ex-message", classes="hint")
        with Horizontal(classes="buttons"):
            yield Button("Extract", id="ex-go", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#ex-out" if self.base else "#ex-base", Input).focus()

    def _message(self, text: str, error: bool = False) -> None:
        message = self.query_one("#ex-message", Static)
        message.update(text)
        message.set_class(error, "error")
        message.set_class(not error, "hint")

    @on(Input.Changed, "#ex-rank")
    def rank_changed(self, event: Input.Changed) -> None:
        """The default output names the rank: it follows the rank until the user edits it."""
        out = self.query_one("#ex-out", Input)
        try:
            rank = parse_rank(event.value)
        except FieldError:
            return
        if out.value == self.auto_out:
            self.auto_out = out.value = self.out_for_rank(rank)

    @on(Input.Changed, "#ex-out")
    def out_changed(self, event: Input.Changed) -> None:
        self.confirmed = None

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def edited(self) -> None:
        """An edit answers the message that was shown: back to the hint."""
        if self.query_one("#ex-message").has_class("error"):
            self._message(HINT)

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.start()

    @on(Button.Pressed, "#ex-go")
    def pressed(self) -> None:
        self.start()

    def start(self) -> None:
        try:
            request = self.request()
        except FieldError as exc:
            self._message(str(exc), error=True)
            self.query_one(f"#{exc.field}").focus()
            return
        if request is not None:
            self.dismiss(request)

    def request(self) -> ExtractRequest | None:
        """The fields as a request; None while an existing output waits for its second enter."""
        from mergetui.errors import UserError
        from mergetui.merge.extract_plan import check_options

        rank = parse_rank(self.query_one("#ex-rank", Input).value)
        energy = parse_energy(self.query_one("#ex-energy", Input).value)
        embed = self.query_one("#ex-embed", Checkbox).value
        options = ExtractOptions(rank=rank, energy=energy, embed_lora=embed)
        try:
            check_options(options)  # the core's own check, so the dialog never lets more through
        except UserError as exc:
            field = "ex-energy" if exc.where == "--energy" else "ex-rank"
            raise FieldError(field, exc.message) from None
        base, base_source = locate_base(self.query_one("#ex-base", Input).value, self.finetuned)
        out, confirm = check_out(self.query_one("#ex-out", Input).value)
        if confirm is not None and self.confirmed != out:
            self.confirmed = out
            self._message(confirm, error=True)
            self.query_one("#ex-out").focus()
            return None
        return ExtractRequest(
            self.finetuned,
            self.finetuned_source,
            base,
            base_source,
            out,
            options,
            force=confirm is not None,
        )
