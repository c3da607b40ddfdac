"""The history of merges run from the app: what was merged, where it went, how long, how it ended.

One JSON object per line in `<data>/runs.jsonl`, newest last, each with the recipe as it was when the
run started (TOML text, unsaved edits included), so a past run can be reopened exactly. `<data>` is
`paths.data_dir()` (`$MERGETUI_DATA_DIR`, else platformdirs' user data folder). Appending is one
write of one line; a damaged line is skipped, never fatal: the history is a convenience, never a
reason to refuse a merge. The recipe and output paths are stored absolute, so a past run means the
same whatever folder mergetui is started in later.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mergetui.paths import data_dir

HISTORY_FILE = "runs.jsonl"
HISTORY_LIMIT = 200  # runs kept when the file is rewritten
OUTCOMES = ("finished", "failed", "cancelled")
_LOCK = threading.Lock()


def history_path() -> Path:
    return data_dir() / HISTORY_FILE


@dataclass
class RunRecord:
    """One merge run as the Run screen's history lists it."""

    started_at: float  # seconds since the epoch
    recipe_toml: str
    output_dir: str
    outcome: str  # finished, failed or cancelled
    seconds: float
    recipe_path: str | None = None  # the file the recipe came from, if any
    method: str = ""
    models: list[str] = field(default_factory=list)
    message: str = ""  # the error of a failed run, or a note
    total_bytes: int = 0
    tensor_count: int = 0
    device: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def recipe_name(self) -> str:
        return Path(self.recipe_path).name if self.recipe_path else "untitled"

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_at))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord | None:
        """A record from a line of the file, or None when the line is not one."""
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in known}
            record = cls(**values)
        except TypeError:
            return None
        if (
            not isinstance(record.recipe_toml, str)
            or not isinstance(record.output_dir, str)
            or record.outcome not in OUTCOMES
            or not isinstance(record.started_at, (int, float))
            or not isinstance(record.seconds, (int, float))
        ):
            return None
        return record

    def recipe(self) -> Any:
        """The recipe as it was run (a `Recipe`)."""
        from mergetui.recipe.toml_read import loads_toml

        return loads_toml(self.recipe_toml, source=self.recipe_path or "history")


def load_history(path: Path | None = None) -> list[RunRecord]:
    """Every readable run, oldest first; a missing file is an empty history."""
    target = path or history_path()
    try:
        lines = target.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        record = RunRecord.from_dict(data) if isinstance(data, dict) else None
        if record is not None:
            records.append(record)
    return records


def with_absolute_paths(record: RunRecord) -> RunRecord:
    """`record` with its recipe path made absolute (from the working folder, where it was given)
    and its output too (from the recipe's folder, by the recipe path rule)."""
    from mergetui.recipe.paths import cli_path, recipe_folder, recipe_path

    recipe_file = str(cli_path(record.recipe_path)) if record.recipe_path else None
    output = record.output_dir
    if output:
        output = str(recipe_path(output, recipe_folder(recipe_file)))
    return replace(record, recipe_path=recipe_file, output_dir=output)


def append_run(record: RunRecord, path: Path | None = None) -> Path:
    """Add a run; past HISTORY_LIMIT runs the oldest are dropped (the file rewritten atomically)."""
    record = with_absolute_paths(record)
    target = path or history_path()
    with _LOCK:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")
        records = load_history(target)
        if len(records) > HISTORY_LIMIT:
            kept = records[-HISTORY_LIMIT:]
            temp = target.with_name(target.name + ".tmp")
            temp.write_text("".join(r.to_json() + "\n" for r in kept), encoding="utf-8")
            os.replace(temp, target)
    return target
