"""Import hygiene, checked in fresh interpreters: the core never pulls in textual, and the CLI's
import pulls in no heavy library (so `mergetui --help` and the app's first frame stay fast).

Modules are discovered by walking the package folders, so new modules are covered automatically.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mergetui

PACKAGE_DIR = Path(mergetui.__file__).resolve().parent
CORE_PACKAGES = ("recipe", "checkpoints", "merge", "chat", "editing")
HEAVY = ("torch", "transformers", "huggingface_hub")


def _modules_under(package: str) -> list[str]:
    folder = PACKAGE_DIR / package
    modules = []
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(("mergetui", *parts)))
    return modules


CORE_MODULES = [m for package in CORE_PACKAGES for m in _modules_under(package)]


def _loaded_after_import(*modules: str) -> set[str]:
    """sys.modules of a fresh interpreter after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_discovery_finds_the_core_modules() -> None:
    assert "mergetui.checkpoints.inspect" in CORE_MODULES
    assert "mergetui.checkpoints.safetensors_io" in CORE_MODULES
    for module in ("hub", "sources", "compat"):  # the Hub client is imported only inside them
        assert f"mergetui.checkpoints.{module}" in CORE_MODULES
    assert "mergetui.recipe.methods" in CORE_MODULES
    assert "mergetui.merge" in CORE_MODULES
    assert "mergetui.merge.analysis" in CORE_MODULES
    assert all(not m.startswith("mergetui.tui") for m in CORE_MODULES)


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_never_imports_textual(package: str) -> None:
    modules = _modules_under(package)
    loaded = _loaded_after_import(*modules)
    assert set(modules) <= loaded
    offenders = sorted(m for m in loaded if m == "textual" or m.startswith("textual."))
    assert not offenders, f"importing mergetui.{package} pulled in {offenders[:5]}"


def test_cli_import_is_light() -> None:
    loaded = _loaded_after_import("mergetui.cli", "mergetui.demo", "mergetui.errors")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.split(".")[0] == "textual")
    assert not heavy, f"importing mergetui.cli pulled in {heavy[:5]}"


def test_command_modules_import_light() -> None:
    commands = [f"mergetui.cli.{p.stem}" for p in sorted((PACKAGE_DIR / "cli").glob("cmd_*.py"))]
    assert "mergetui.cli.cmd_inspect" in commands and "mergetui.cli.cmd_demo" in commands
    loaded = _loaded_after_import(*commands)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"importing the command modules pulled in {heavy[:5]}"


@pytest.mark.parametrize("package", ("recipe", "checkpoints"))
def test_recipe_and_checkpoint_modules_import_light(package: str) -> None:
    """Validation and inspection run before any tensor is touched: no heavy import at load time."""
    loaded = _loaded_after_import(*_modules_under(package))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"importing mergetui.{package} pulled in {heavy[:5]}"


def test_the_check_itself_sees_an_import() -> None:
    """Guard against a check that can never fail: a module known to import torch is seen."""
    assert "torch" in _loaded_after_import("torch")
