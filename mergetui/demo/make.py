"""`mergetui demo`'s folder: the trained family, its texts, and recipes that merge it.

DIR/base, DIR/prose, DIR/code     the family (mergetui.demo.family), ready to merge and chat
DIR/calib/prose.txt, code.txt     what a search scores candidates on (recipes/evolve.toml)
DIR/heldout/prose.txt, code.txt   what to judge a merge on: never trained or searched on
DIR/recipes/NAME.toml             mergetui/data/demo_recipes/, paths relative to the file
DIR/merges/                       where the recipes' merges land
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mergetui.demo.corpus import DOMAINS, corpus_text
from mergetui.demo.family import FAMILY_MODELS, FAMILY_SHAPE, write_family
from mergetui.resources import data_text

DEMO_MODELS = FAMILY_MODELS
DEMO_MARKER = "mergetui-demo.json"
_DEMO_FORMAT = 4  # 4: the trained base/prose/code family and its calib/heldout texts
# The demo's text folders, each with one DOMAIN.txt per domain, and the corpus split each holds.
DEMO_TEXTS = {"calib": "calib", "heldout": "heldout"}
# The recipes that merge them. Every path in a recipe is relative to the recipe file: models
# (recipes/ -> ../base), `output` (../merges/NAME) and a search's texts (../calib/NAME.txt), so
# merges land in the demo's merges/ from wherever they are run.
DEMO_RECIPES = (
    "task-arithmetic",
    "linear-soup",
    "slerp-gradient",
    "ties",
    "dare-ties",
    "passthrough-stack",
    "evolve",
)


@dataclass
class DemoInfo:
    """What `make_demo` left on disk. `created` is False when an existing demo was reused."""

    directory: Path
    models: dict[str, Path]
    recipes: dict[str, Path]
    created: bool
    # "calib" / "heldout" -> domain -> text file
    texts: dict[str, dict[str, Path]] = field(default_factory=dict)

    @property
    def recipes_dir(self) -> Path:
        return self.directory / "recipes"

    @property
    def merges_dir(self) -> Path:
        return self.directory / "merges"


def _demo_recipes() -> dict[str, str]:
    """The demo's TOML recipes (mergetui/data/demo_recipes/NAME.toml), in DEMO_RECIPES order."""
    return {name: data_text("demo_recipes", f"{name}.toml") for name in DEMO_RECIPES}


def _text_paths(root: Path) -> dict[str, dict[str, Path]]:
    return {
        folder: {domain: root / folder / f"{domain}.txt" for domain in DOMAINS}
        for folder in DEMO_TEXTS
    }


def _info(root: Path, recipes: list[str], created: bool) -> DemoInfo:
    return DemoInfo(
        root,
        {name: root / name for name in DEMO_MODELS},
        {name: root / "recipes" / f"{name}.toml" for name in recipes},
        created=created,
        texts=_text_paths(root),
    )


def _existing_demo(directory: Path) -> DemoInfo | None:
    """The demo in `directory` if a complete one is there (the marker is written last)."""
    try:
        marker = json.loads((directory / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _DEMO_FORMAT:
        return None
    if marker.get("models") != list(DEMO_MODELS) or not isinstance(marker.get("recipes"), list):
        return None
    info = _info(directory, [str(name) for name in marker["recipes"]], created=False)
    files = [path / "config.json" for path in info.models.values()]
    files += list(info.recipes.values())
    files += [path for texts in info.texts.values() for path in texts.values()]
    return info if all(path.is_file() for path in files) else None


def _ours(entry: Path) -> bool:
    names = {*DEMO_MODELS, *DEMO_TEXTS, "recipes", "merges", DEMO_MARKER}
    return entry.name in names or entry.name.startswith(".demo-build-")


def _build(build: Path, report: Callable[[str], None]) -> dict[str, str]:
    """Everything but merges/ into `build`; the recipes written, by name."""
    shape = FAMILY_SHAPE
    report(
        f"writing the trained family: base (llama, {shape.num_layers} layers, hidden "
        f"{shape.hidden_size}) and its fine-tunes prose and code"
    )
    write_family(build)
    report("writing the calibration and held-out texts")
    for folder, split in DEMO_TEXTS.items():
        (build / folder).mkdir()
        for domain in DOMAINS:
            (build / folder / f"{domain}.txt").write_text(
                corpus_text(domain, split), encoding="utf-8"
            )
    (build / "recipes").mkdir()
    recipes = _demo_recipes()
    for name, text in recipes.items():
        (build / "recipes" / f"{name}.toml").write_text(text, encoding="utf-8")
    return recipes


def make_demo(
    directory: str | Path = "mergetui-demo",
    force: bool = False,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> DemoInfo:
    """Write the demo (offline, from the shipped family) into `directory`, or reuse one there.

    Everything is written in a hidden folder and moved into place, and the marker file is written
    last, so an interrupted run is rebuilt next time instead of being taken for a finished demo.
    `force` rebuilds the demo's own folders; other files in `directory` are never touched.
    """
    from mergetui.errors import UserError

    root = Path(directory).expanduser().resolve()
    report = on_progress or (lambda _message: None)
    if not force:
        existing = _existing_demo(root)
        if existing is not None:
            return existing
    if root.exists() and not root.is_dir():
        raise UserError("exists and is not a folder", where=str(root), fix="choose another --dir")
    strangers = [e.name for e in root.iterdir() if not _ours(e)] if root.is_dir() else []
    if strangers and not force:
        raise UserError(
            f"folder is not empty and holds no mergetui demo ({', '.join(sorted(strangers)[:3])}...)",
            where=str(root),
            fix="choose an empty or new --dir, or pass --force to write the demo beside those files",
        )

    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).unlink(missing_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=root))
    try:
        recipes = _build(build, report)
        for name in (*DEMO_MODELS, *DEMO_TEXTS, "recipes"):
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            (build / name).rename(target)
        marker = {"format": _DEMO_FORMAT, "models": list(DEMO_MODELS), "recipes": list(recipes)}
        (root / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return _info(root, list(recipes), created=True)
