"""The Run screen's kinds of run beyond one recipe, and how a run's end is told.

A multi-stage file (docs/multi-stage.md) and an MoE recipe (docs/moe.md) each need their own
`r` (an output asked for, a question before a folder is replaced) and their own words; they live in
this mixin of `RunScreen` (screen.py), which holds the state they read (`chosen_out`,
`stage_heading`, `running_stages`...) and the widgets they write to. No message handler is here:
Textual's `@on` handlers stay on the screen class itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape

from mergetui.tui.dialogs.confirm import ConfirmDialog
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.paths_text import short_path
from mergetui.tui.run.messages import RunEnded


class RunKinds:
    """`RunScreen`'s summary before a run, its multi-stage and MoE runs, its replace question and
    its end-of-run words."""

    app: Any
    chosen_out: tuple[Any, Path] | None
    running: bool
    running_stages: bool
    stage_heading: str
    sub_title: str | None

    def _show_idle(self) -> None:
        """The summary before a run: a recipe's, an MoE's or a multi-stage file's."""
        first = self.last_outcome is None
        if self.app.document.moe is not None:
            self.sub_title = None
            self.progress.show_moe(self.app.document, self._output_dir(), first=first)
            self.refresh_bindings()
            return
        if self.app.document.stages is not None:
            output, stages_dir = self._stage_folders()
            self.progress.show_stages(self.app.document, output, stages_dir, first=first)
            self._stage_title()
            self.refresh_bindings()
            return
        self.sub_title = None
        self.progress.show_recipe(self.app.document, self._output_dir(), first=first)
        self.refresh_bindings()

    @property
    def stages_out(self) -> Path | None:
        """The final output chosen at `r` for the open multi-stage file (none chosen: None)."""
        chosen = self.chosen_out
        return chosen[1] if chosen is not None and chosen[0] is self.app.document else None

    def _stage_folders(self) -> tuple[Path | None, Path | None]:
        """A multi-stage file's final output (None: not set yet) and its intermediate folder, as
        `mergetui merge` would place them (every stage named: the last one's folder)."""
        from mergetui.recipe.stage_order import intermediate_folder

        document = self.app.document
        stages = document.stages or []
        output = self._output_dir()
        if any(stage.name is None for stage in stages):
            if output is None:
                return None, None
            return output, intermediate_folder(document.path or "", output, None)
        inter = intermediate_folder(document.path or "", None, None)
        return inter / str(stages[-1].name), inter

    def _stage_title(self) -> None:
        """The header on a multi-stage file: its name, and the stage that runs while it runs
        (the app's title names the stage open on the Recipe screen)."""
        document = self.app.document
        name = document.path.name if document.path else document.display_name
        running = f" · {self.stage_heading}" if self.running and self.stage_heading else ""
        mark = " [modified]" if document.modified else ""  # the app's MODIFIED_MARK
        self.sub_title = f"{name}{running}{mark}"

    def _placed(self) -> list[Any]:
        """The open multi-stage file's stages (as edited), placed and ordered as `mergetui merge`
        places them; raises the located UserError it would."""
        from mergetui.recipe.stage_order import place_stages

        document = self.app.document
        stages = copy.deepcopy(document.stages)
        return place_stages(stages, document.path or self._recipe_dir(), out=self.stages_out)

    def _ask_replace(self, output: Path) -> None:
        """The output exists: replace it only if a previous merge wrote it, and only when asked."""
        from mergetui.merge.target import replace_refusal

        why = replace_refusal(output, recipe_dir=self._recipe_dir())  # the engine checks too
        if why is not None:
            self.notify(
                f"{short_path(output)} already exists, and only a folder that a previous "
                f"merge wrote can be replaced: this one {why}. Remove or move it yourself if "
                f"it may go, or {self._elsewhere()}.",
                title="Cannot replace the output",
                severity="error",
                timeout=12,
            )
            if self.app.document.moe is not None and self.stages_out is not None:
                self.chosen_out = None  # the next `r` asks for another folder
                self._show_idle()
            return
        self.app.push_screen(
            ConfirmDialog(
                "Replace the output?",
                f"{short_path(output)} already exists. Replace it once the new merge is "
                "complete? (It stays as it is if the merge fails or is cancelled.)",
                yes="Replace",
                no="Keep it",
            ),
            lambda yes: self._start(force=True) if yes else None,
        )

    def _elsewhere(self) -> str:
        """How to send the output elsewhere: an MoE recipe's is in its file, or asked at `r`."""
        moe = self.app.document.moe
        if moe is not None:
            return (
                "set another output in the MoE recipe's file"
                if moe.output
                else "press r again to choose another folder"
            )
        return "set another output on the Recipe screen (F3)"

    def _run_stages(self) -> None:
        """`r` on a multi-stage file: an output for the final stage when it has none, a question
        when a stage's folder came from another recipe, then the run."""
        from mergetui.errors import UserError
        from mergetui.merge.stages import replace_refusals, stage_outputs

        document = self.app.document
        stages = document.stages or []
        if self._output_dir() is None and any(stage.name is None for stage in stages):
            self.app.push_screen(
                TextPrompt(
                    "Output folder for the final stage",
                    str(Path("merges") / (document.path.stem if document.path else "multi")),
                    paths=True,
                    hint=f"relative to {self._relative_to()} · the other stages go to "
                    "OUT-stages · enter merges",
                ),
                self._stages_output_chosen,
            )
            return
        try:
            placed = self._placed()
            states = stage_outputs(placed, None)
        except UserError as exc:
            self.notify(str(exc), title="Cannot run the stages", severity="error", timeout=12)
            return
        refused = replace_refusals(placed, states, self._recipe_dir())
        if refused:
            stage, why = refused[0]
            self.notify(
                f"{stage.label}'s folder {short_path(stage.output)} was not written by a merge "
                f"of this stage, and only a folder that a previous merge wrote can be replaced: "
                f"this one {why}. Remove or move it yourself if it may go.",
                title="Cannot replace a stage's output",
                severity="error",
                timeout=12,
            )
            return
        others = [s for s, state in zip(placed, states, strict=True) if state.state == "other"]
        if not others:
            self._start(force=False, stages=placed)
            return
        names = ", ".join(short_path(s.output) for s in others)
        self.app.push_screen(
            ConfirmDialog(
                "Replace stage outputs?",
                f"{names} already exist(s), merged from another recipe. Replace each once its "
                "new merge is complete? (Up-to-date stages are skipped either way.)",
                yes="Replace",
                no="Keep them",
            ),
            lambda yes: self._start(force=True, stages=placed) if yes else None,
        )

    def _run_moe(self) -> None:
        """`r` on an MoE recipe: an output folder when its recipe names none (the run's, not an
        edit: the recipe is read-only), a question before replacing one, then the assembly."""
        document = self.app.document
        output = self._output_dir()
        if output is None:
            stem = document.path.stem if document.path else "moe"
            self.app.push_screen(
                TextPrompt(
                    "Output folder for the MoE",
                    str(Path("merges") / stem),
                    paths=True,
                    hint=f"relative to {self._relative_to()} · enter assembles · escape cancels",
                ),
                self._moe_output_chosen,
            )
        elif output.exists():
            self._ask_replace(output)
        else:
            self._start(force=False)

    def _moe_output_chosen(self, text: str | None) -> None:
        self._run_output_chosen(text, self._run_moe)

    def _stages_output_chosen(self, text: str | None) -> None:
        self._run_output_chosen(text, self._run_stages)

    def _run_output_chosen(self, text: str | None, then: Callable[[], None]) -> None:
        """The output asked at `r` for a file the app does not edit (an MoE recipe, a
        multi-stage file): the run's choice, not an edit; then `r` goes on."""
        if not text:
            return
        from mergetui.recipe.paths import cli_path

        folder = Path(text).expanduser()
        chosen = folder if folder.is_absolute() else cli_path(self._recipe_dir() / folder)
        self.chosen_out = (self.app.document, chosen)
        self._show_idle()
        then()

    def _stage_prefix(self) -> str:
        """`stage 2/3: NAME · ` before the state line while a multi-stage run is in a stage."""
        return f"[b $accent]{escape(self.stage_heading)}[/] · " if self.stage_heading else ""

    def _say_ended(self, event: RunEnded, elapsed: str) -> None:
        """How the run ended, on the state line, in the log and (finished or failed) a toast."""
        say = self.log_tab.say
        if self.running_stages and event.outcome == "cancelled":
            self.progress.state_line(
                f"[b $warning]cancelled[/] after {elapsed}: {escape(event.message)}"
            )
            say(f"cancelled: {event.message}", "yellow")
            return
        if self.running_stages and event.outcome == "finished":
            where = escape(short_path(event.output_dir)) if event.output_dir else ""
            done = event.message.partition(", ")[2]  # "N merged, M up to date"
            self.progress.state_line(
                f"[b $success]✓ {escape(done)}[/] in {elapsed} → {where} · "
                "[b]t[/] chat · [b]u[/] push"
            )
            say(f"finished in {elapsed}: {event.message}; the final model is in {where}", "green")
            self.app.last_merge_output = str(event.output_dir)
            self.notify(f"final model in {short_path(event.output_dir)}", title="Stages finished")
            return
        if event.outcome == "finished":
            where = escape(short_path(event.output_dir)) if event.output_dir else ""
            verb = "assembled" if self.app.document.moe is not None else "merged"
            self.progress.state_line(
                f"[b $success]✓ {verb}[/] into {where} in {elapsed} · "
                "[b]t[/] chat with it · [b]u[/] push to Hub"
            )
            say(f"finished in {elapsed}: {event.message}", "green")
            self.app.last_merge_output = str(event.output_dir)
            self.notify(f"merged into {short_path(event.output_dir)}", title="Merge finished")
        elif event.outcome == "cancelled":
            self.progress.state_line(
                f"[b $warning]cancelled[/] after {elapsed}: nothing was written"
            )
            say("cancelled: nothing was written (no output, no temporary folder)", "yellow")
        else:
            self.progress.state_line(f"[b $error]✗ failed[/]: {escape(event.message)}")
            say(f"failed: {event.message}", "red")
            self.notify(event.message, title="Merge failed", severity="error", timeout=10)
