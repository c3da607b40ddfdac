"""Shared Rich output for the CLI: one console per stream, one way to report a user error."""

from __future__ import annotations

from functools import cache
from typing import Any

from rich.console import Console
from rich.markup import escape

from mergetui.errors import UserError


@cache
def console() -> Console:
    return Console(highlight=False)


@cache
def console_err() -> Console:
    return Console(stderr=True, highlight=False)


def report_error(exc: UserError) -> None:
    """One line saying what and where, then the fix: no traceback for the user's mistakes."""
    where = f"{exc.where}: " if exc.where else ""
    console_err().print(
        f"[bold red]error:[/] {escape(where + exc.message)}", markup=True, soft_wrap=True
    )
    if exc.fix:
        console_err().print(f"  [dim]fix:[/] {escape(exc.fix)}", soft_wrap=True)


def bytes_progress(count_field: str, target: Console, *, elapsed: bool = False) -> Any:
    """The CLI's progress bar for long byte work (merges, downloads): bytes, a count column
    (`{task.fields[<count_field>]}`: tensors, files), speed, time left (and time elapsed)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=False),
        TextColumn(f"{{task.fields[{count_field}]}}"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    if elapsed:
        columns.append(TimeElapsedColumn())
    return Progress(*columns, console=target, transient=False)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def print_problems(path: str, problems: list) -> None:
    """A recipe's problems as `mergetui validate` prints them (`merge` prints its own the same way)."""
    out = console()
    errors = sum(1 for p in problems if p.is_error)
    warnings = len(problems) - errors
    if not problems:
        out.print(f"[bold]{escape(path)}[/]: [green]ok[/]", soft_wrap=True)
        return
    summary = [_plural(errors, "error")] if errors else []
    summary += [_plural(warnings, "warning")] if warnings else []
    colour = "red" if errors else "yellow"
    out.print(f"[bold]{escape(path)}[/]: [{colour}]{', '.join(summary)}[/]", soft_wrap=True)
    for problem in problems:
        label = "[bold red]error[/]  " if problem.is_error else "[yellow]warning[/]"
        out.print(
            f"  {label} [cyan]{escape(problem.location)}[/]: {escape(problem.message)}",
            soft_wrap=True,
        )
        if problem.fix:
            out.print(f"           [dim]fix:[/] {escape(problem.fix)}", soft_wrap=True)
