"""Sizes, counts and durations for people, one spelling everywhere (CLI tables, screens, events)."""

from __future__ import annotations

from rich.filesize import pick_unit_and_suffix

_BYTE_UNITS = ["B", "KB", "MB", "GB", "TB"]
_COUNT_UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))


def human_bytes(count: float | None) -> str:
    """1234567 -> "1.2 MB": decimal units as the Hub shows sizes, one decimal; None -> "-"."""
    if count is None:
        return "-"
    unit, suffix = pick_unit_and_suffix(int(count), _BYTE_UNITS, 1000)
    if unit == 1:
        return f"{int(count)} B"
    return f"{count / unit:.1f} {suffix}"


def human_count(count: float | None, spec: str = ".3g") -> str:
    """7241732096 -> "7.24B" (how parameter counts are spoken of); `spec` formats the figure."""
    if count is None:
        return "-"
    for threshold, suffix in _COUNT_UNITS:
        if count >= threshold:
            return f"{count / threshold:{spec}}{suffix}"
    return str(int(count))


def format_duration(seconds: float | None) -> str:
    """12.3 s, 4:05 or 1:02:03; "—" when there is no figure."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
