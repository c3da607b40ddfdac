"""The wheel holds every package: pyproject lists them by hand (themes/ and sample_recipes/ are mapped
in from the top of the repository), so a new subpackage left off the list would be missing from an
installed mergetui while an editable install still finds it."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "mergetui").rglob("__init__.py")
    }
    mapped = {"mergetui.themes", "mergetui.sample_recipes"}
    assert listed - mapped == on_disk
    assert mapped <= listed


def test_every_data_file_is_covered_by_package_data() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for path in (ROOT / "mergetui").rglob("*"):
        if path.is_dir() or path.suffix == ".py" or "__pycache__" in path.parts:
            continue
        package_dir = path.parent
        while not (package_dir / "__init__.py").is_file():
            package_dir = package_dir.parent
        package = ".".join(package_dir.relative_to(ROOT).parts)
        relative = path.relative_to(package_dir)
        patterns = package_data.get(package, [])
        assert any(relative.match(pattern) for pattern in patterns), (package, str(relative))
