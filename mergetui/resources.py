"""Files shipped with the package: bundled themes, sample recipes and the data in `mergetui/data/`.

In the repository themes and sample recipes live at the top level (`themes/`, `sample_recipes/`);
the wheel carries them as the packages `mergetui.themes` and `mergetui.sample_recipes`, so
importlib.resources finds them in both an installed wheel and an editable checkout. `mergetui/data/`
is package data (pyproject's package-data): the English sample text that the demo tokenizer is
trained on and `mergetui eval` scores, and the demo's recipes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _package_dir(package: str, repo_folder: str) -> Path:
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / repo_folder


def themes_dir() -> Path:
    return _package_dir("mergetui.themes", "themes")


def sample_recipes_dir() -> Path:
    return _package_dir("mergetui.sample_recipes", "sample_recipes")


def data_text(*parts: str) -> str:
    """A UTF-8 text file shipped in `mergetui/data/` (`parts`: its path there)."""
    file = resources.files("mergetui") / "data"
    for part in parts:
        file = file / part
    return file.read_text(encoding="utf-8")


def sample_text() -> str:
    """The bundled English sample: tokenizer training data, demo fine-tuning data, perplexity text."""
    return data_text("sample_text.txt")


def sample_sections() -> dict[str, str]:
    """The sample split at its headings (a line followed by a blank line), keyed by heading."""
    sections: dict[str, list[str]] = {}
    current = "preamble"
    lines = sample_text().splitlines()
    for index, line in enumerate(lines):
        next_blank = index + 1 < len(lines) and not lines[index + 1].strip()
        previous_blank = index == 0 or not lines[index - 1].strip()
        if line.strip() and previous_blank and next_blank and len(line) < 60:
            current = line.strip()
            sections.setdefault(current, [])
            continue
        sections.setdefault(current, []).append(line)
    return {
        name: "\n".join(body).strip() + "\n" for name, body in sections.items() if "".join(body)
    }
