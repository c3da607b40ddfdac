"""Shared Rich output for the CLI: one console per stream, one way to report a user error."""

from __future__ import annotations

from functools import cache

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
    console_err().print(f"[bold red]error:[/] {escape(where + exc.message)}", markup=True, soft_wrap=True)
    if exc.fix:
        console_err().print(f"  [dim]fix:[/] {escape(exc.fix)}", soft_wrap=True)
