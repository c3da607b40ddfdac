"""`mergetui open`: the app's entry on the command line, and its errors before any screen appears."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mergetui.cli import build_parser, main
from mergetui.errors import UserError
from mergetui.tui.app import run_app


def test_open_is_a_subcommand() -> None:
    args = build_parser().parse_args(["open", "recipe.toml", "--screen", "checkpoints"])
    assert args.recipe == Path("recipe.toml") and args.screen == "checkpoints"
    assert build_parser().parse_args(["open"]).recipe is None


def test_missing_recipe_is_a_one_line_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["open", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err
    assert "no such recipe file" in err and "missing.toml" in err
    assert "Traceback" not in err


def test_broken_recipe_is_reported_before_the_app_starts(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[merge]\nmethod = "slerp"\n[models.a]\n', encoding="utf-8")
    with pytest.raises(UserError):
        run_app(broken)


def test_unknown_screen_is_refused() -> None:
    with pytest.raises(UserError) as caught:
        run_app(None, screen="settings")
    assert "recipe" in str(caught.value)


def test_help_does_not_import_textual() -> None:
    code = "import sys; from mergetui.cli import main\ntry:\n main(['open', '--help'])\nexcept SystemExit: pass\nprint('textual' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize(
    ("argv", "recipe", "screen"),
    [
        ([], None, "recipe"),
        (["slerp.toml"], Path("slerp.toml"), "recipe"),
        (["config.yml"], Path("config.yml"), "recipe"),
        (["open", "x.toml", "--screen", "chat"], Path("x.toml"), "chat"),
    ],
)
def test_bare_mergetui_and_a_recipe_path_open_the_app(
    argv: list[str],
    recipe: Path | None,
    screen: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mergetui.tui.app as app_module

    opened: list[tuple[Path | None, str]] = []
    monkeypatch.setattr(
        app_module, "run_app", lambda path, screen: opened.append((path, screen)) or 0
    )
    assert main(argv) == 0
    assert opened == [(recipe, screen)]


def test_a_mistyped_command_is_still_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["merg", "recipe.toml"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
