"""Errors a person can act on: what went wrong, where, and how to fix it.

The CLI prints a `UserError` as one line (plus the fix) and exits 1, without a traceback; the app
shows it in a notification. Anything else escaping is a bug.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (recipe, checkpoint, path), not with mergetui."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" ({self.fix})"
        return text


class CancelledError(Exception):
    """Raised inside long work when the user's cancel event is set."""
