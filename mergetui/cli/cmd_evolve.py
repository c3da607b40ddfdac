"""`mergetui evolve SPEC`: search per-layer merge values with CMA-ES (docs/evolve.md).

SPEC is a recipe with a `[search]` table (TOML, or mergekit YAML with `search:`), or a
mergekit-evolve config as it is. Everything is checked before a model is loaded, and nothing is
written until the first candidate is scored: the results go to `--out` (default: `SPEC_STEM-evolve`
beside the spec). A progress line shows the generation, the evaluations done, the best fitness and
the time left. Ctrl-C (or SIGTERM, SIGHUP) stops after the candidate in progress, keeps everything
and exits 130 (128 + the signal); the same command then resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from mergetui.cli.options import add_json_option
from mergetui.formatting import format_duration

HELP = "search per-layer merge weights automatically (CMA-ES), on this machine or on Ray"
DESCRIPTION = (
    "Search the values a recipe's [search] table names (or a mergekit-evolve config's genome), "
    "scoring each candidate merged in memory; the best is written as best.toml and best.yaml."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec",
        type=Path,
        metavar="SPEC",
        help="recipe with a [search] table (.toml/.yaml), or mergekit-evolve config",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="results folder (default: SPEC_STEM-evolve beside the spec)",
    )
    number = {"type": int, "metavar": "N"}
    parser.add_argument("--budget", **number, help="evaluations in all (default: the spec's)")
    parser.add_argument(
        "--population", **number, help="candidates per generation (default: the spec's, or cma's)"
    )
    parser.add_argument("--seed", **number, help="seed of the search (default: the spec's, or 0)")
    parser.add_argument(
        "--device",
        default="auto",
        metavar="D",
        help="where candidates are merged and scored: auto, cpu, cuda, cuda:N or mps",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="score here (local, default) or on a Ray cluster (the optional `ray` extra)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster (default: start a local Ray instance)",
    )
    parser.add_argument(
        "--workers",
        **number,
        help="Ray actors (default: one per GPU, else one per node, each with its node's CPUs)",
    )
    add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    from mergetui.cli.interrupts import install_stop_signals, restore_signals
    from mergetui.cli.output import console, console_err
    from mergetui.device import check_device_name
    from mergetui.errors import UserError
    from mergetui.search.loop import run_search
    from mergetui.search.outputs import default_out_dir
    from mergetui.search.spec import load_search_spec, with_overrides

    device = check_device_name(args.device)
    if args.workers is not None and args.backend != "ray":
        raise UserError(
            "--workers is for the ray backend (the local one scores one candidate at a time)",
            where="--workers",
            fix="add --backend ray, or drop --workers",
        )
    spec = load_search_spec(args.spec)
    spec = with_overrides(spec, budget=args.budget, population=args.population, seed=args.seed)
    out_dir: Path = args.out if args.out is not None else default_out_dir(args.spec)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(
            "the results folder is a file", where=str(out_dir), fix="pass another --out"
        )
    cancel = threading.Event()
    received: list[int] = []
    display = _Progress(console_err(), quiet=args.json)
    previous = install_stop_signals(cancel, received)
    try:
        with display:
            finished = run_search(
                spec,
                out_dir=out_dir,
                backend_name=args.backend,
                device=device,
                workers=args.workers,
                ray_address=args.ray_address,
                on_event=display.on_event,
                cancel=cancel,
            )
    finally:
        restore_signals(previous)
    if args.json:
        console().print_json(json.dumps(_summary(out_dir, finished)))
    else:
        _print_result(console(), finished, out_dir)
    if finished.stopped:
        return 128 + (received[0] if received else signal.SIGINT)
    return 0


def _summary(out_dir: Path, finished: Any) -> dict[str, Any]:
    """summary.json's content (with `stopped` as this run ended), or the little there is."""
    from mergetui.search.outputs import SUMMARY_FILE

    try:
        data = json.loads((out_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {"out_dir": str(out_dir), "evaluations": finished.evaluations, "best": None}
    data["stopped"] = finished.stopped
    return data


def _print_result(out: Any, finished: Any, out_dir: Path) -> None:
    from rich.markup import escape

    from mergetui.search.outputs import BEST_TOML

    if finished.stopped:
        out.print(
            f"[yellow]Stopped[/] after {finished.evaluations} evaluations; run the same command "
            "again to resume.",
            soft_wrap=True,
        )
    if finished.best_fitness is None:
        out.print("No candidate was scored; nothing was written.")
        return
    best = out_dir / BEST_TOML
    out.print(
        f"[green]Best fitness[/] {finished.best_fitness:.6g} of {finished.evaluations} "
        f"evaluations: {escape(str(best))} (merge it with: mergetui merge {escape(str(best))})",
        soft_wrap=True,
    )


class _Progress:
    """The progress line: generation, evaluations done of the budget, best fitness, time left."""

    def __init__(self, err: Any, *, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.err = err
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            console=err,
            transient=False,
            disable=quiet,
        )
        self.task: Any = None
        self.started = time.perf_counter()
        self.done_here = 0
        self.generation = 0
        self.best: float | None = None
        self.eta: float | None = None
        self.budget = 0

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, event: Any) -> None:
        from rich.markup import escape

        from mergetui.search import events
        from mergetui.search.loop import estimate_eta

        if isinstance(event, events.SearchStarted):
            self.budget = event.budget
            self.task = self.progress.add_task(
                f"searching on {event.backend} ({event.device})",
                total=event.budget,
                completed=event.resumed,
                status=f"{event.resumed} resumed" if event.resumed else "",
            )
            self.started = time.perf_counter()
        elif isinstance(event, events.CandidateScored) and self.task is not None:
            self.generation = event.generation
            if not event.resumed:
                self.done_here += 1
            remaining = self.budget - event.evaluation - 1
            self.eta = estimate_eta(self.started, self.done_here, remaining)
            self.progress.update(task_id=self.task, completed=event.evaluation + 1)
            self._status()
        elif isinstance(event, events.NewBest) and self.task is not None:
            self.best = event.fitness
            self._status()
        elif isinstance(event, events.SearchNotice) and not self.quiet:
            self.progress.console.print(f"[yellow]note:[/] {escape(event.message)}", soft_wrap=True)

    def _status(self) -> None:
        best = "-" if self.best is None else f"{self.best:.5g}"
        left = "" if self.eta is None else f" · ETA {format_duration(self.eta)}"
        self.progress.update(
            task_id=self.task, status=f"generation {self.generation} · best {best}{left}"
        )
