"""The run history in the user data folder: $MERGETUI_DATA_DIR isolation, round trip with the
recipe snapshot, damaged lines skipped, the size limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergetui.merge import history
from mergetui.merge.history import RunRecord, append_run, history_path, load_history
from mergetui.paths import DATA_ENV, data_dir
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_write import dumps_toml

RECIPE = """\
[merge]
method = "linear"
output = "out"

[models.a]
source = "./a"

[models.a.parameters]
weight = 0.25
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))


def record(**changes) -> RunRecord:
    values = dict(
        started_at=1_700_000_000.0,
        recipe_toml=RECIPE,
        output_dir="/x/out",
        outcome="finished",
        seconds=1.5,
        recipe_path="/x/soup.toml",
        method="linear",
        models=["a"],
    )
    values.update(changes)
    return RunRecord(**values)


def test_the_data_folder_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    assert data_dir() == tmp_path / "data"
    assert history_path() == tmp_path / "data" / "runs.jsonl"
    monkeypatch.delenv(DATA_ENV)
    import platformdirs

    assert data_dir() == Path(platformdirs.user_data_dir("mergetui"))


def test_round_trip_keeps_the_recipe_as_it_was_run() -> None:
    assert load_history() == []
    first = record()
    second = record(outcome="cancelled", seconds=0.2, message="nothing was written")
    append_run(first)
    append_run(second)
    loaded = load_history()
    assert loaded == [first, second]
    assert dumps_toml(loaded[0].recipe()) == dumps_toml(loads_toml(RECIPE))
    assert (
        loaded[0].recipe_name == "soup.toml" and record(recipe_path=None).recipe_name == "untitled"
    )
    assert loaded[0].id != loaded[1].id


def test_damaged_lines_are_skipped() -> None:
    append_run(record())
    with open(history_path(), "a", encoding="utf-8") as handle:
        handle.write("not json\n")
        handle.write(json.dumps({"outcome": "exploded"}) + "\n")
        handle.write(json.dumps([1, 2]) + "\n")
        handle.write(json.dumps({**json.loads(record().to_json()), "outcome": "weird"}) + "\n")
    append_run(record(outcome="failed", message="boom"))
    assert [r.outcome for r in load_history()] == ["finished", "failed"]


def test_the_history_keeps_the_newest_runs(monkeypatch) -> None:
    monkeypatch.setattr(history, "HISTORY_LIMIT", 3)
    for index in range(5):
        append_run(record(seconds=float(index)))
    assert [r.seconds for r in load_history()] == [2.0, 3.0, 4.0]
    assert not list(history_path().parent.glob("*.tmp"))
