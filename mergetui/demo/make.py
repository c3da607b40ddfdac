"""`mergetui demo`'s folder: a base and three fine-tunes of it (random tiny Llamas), and recipes.

The trained prose/code family of issue 15 (`mergetui.demo.family`, `train`, `corpus`) is not wired
in yet: its weights are not shipped, so the demo still writes the random family it always did.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergetui.demo.tiny import _copy_tokenizer, make_tiny_model, train_tokenizer
from mergetui.resources import data_text

# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# The `mergetui demo` family: a base and three fine-tunes of it, plus recipes that merge them.

DEMO_MODELS = ("base", "chat", "code", "math")
DEMO_MARKER = "mergetui-demo.json"
_DEMO_FORMAT = 3  # 3: outputs relative to the recipe file (../merges/NAME)
# A bit bigger than the test models, so per-layer grids have something to show.
_DEMO_SHAPE = dict(num_layers=8, hidden_size=128, intermediate_size=256, vocab_size=512)
# Seeds and noise per fine-tune: different enough that merges visibly differ.
_DEMO_FINE_TUNES = {"chat": (1, 0.02), "code": (2, 0.03), "math": (3, 0.025)}
# The recipes that merge them. Every path in a recipe is relative to the recipe file: models
# (recipes/ -> ../base) and `output` (../merges/NAME), so merges land in the demo's merges/ from
# wherever they are run.
DEMO_RECIPES = ("linear-soup", "slerp-gradient", "ties", "dare-ties", "passthrough-stack")


@dataclass
class DemoInfo:
    """What `make_demo` left on disk. `created` is False when an existing demo was reused."""

    directory: Path
    models: dict[str, Path]
    recipes: dict[str, Path]
    created: bool

    @property
    def recipes_dir(self) -> Path:
        return self.directory / "recipes"

    @property
    def merges_dir(self) -> Path:
        return self.directory / "merges"


def _demo_recipes() -> dict[str, str]:
    """The demo's TOML recipes (mergetui/data/demo_recipes/NAME.toml), in DEMO_RECIPES order."""
    return {name: data_text("demo_recipes", f"{name}.toml") for name in DEMO_RECIPES}


def _existing_demo(directory: Path) -> DemoInfo | None:
    """The demo in `directory` if a complete one is there (the marker is written last)."""
    try:
        marker = json.loads((directory / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _DEMO_FORMAT:
        return None
    models = {name: directory / name for name in marker.get("models", [])}
    recipes = {name: directory / "recipes" / f"{name}.toml" for name in marker.get("recipes", [])}
    complete = all((path / "config.json").is_file() for path in models.values()) and all(
        path.is_file() for path in recipes.values()
    )
    if not complete or set(models) != set(DEMO_MODELS):
        return None
    return DemoInfo(directory, models, recipes, created=False)


def _ours(entry: Path) -> bool:
    return entry.name in {*DEMO_MODELS, "recipes", "merges", DEMO_MARKER} or entry.name.startswith(
        ".demo-build-"
    )


def make_demo(
    directory: str | Path = "mergetui-demo",
    force: bool = False,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> DemoInfo:
    """Write the demo family (offline) into `directory`, or reuse a complete one already there.

    Models are built in a hidden folder and moved into place, and the marker file is written last,
    so an interrupted run is rebuilt next time instead of being taken for a finished demo. `force`
    rebuilds the demo's own folders; other files in `directory` are never touched.
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
        report("training the demo tokenizer")
        tokenizer_dir = train_tokenizer(build / "tokenizer", _DEMO_SHAPE["vocab_size"])
        report("building base (llama, 8 layers, hidden 128)")
        shape = {k: v for k, v in _DEMO_SHAPE.items() if k != "vocab_size"}
        make_tiny_model(
            build / "base",
            "llama",
            seed=0,
            vocab_size=_DEMO_SHAPE["vocab_size"],
            dtype="bfloat16",
            tokenizer=False,
            **shape,
        )
        _copy_tokenizer(tokenizer_dir, build / "base")
        for name, (seed, noise) in _DEMO_FINE_TUNES.items():
            report(f"building {name} (a fine-tune of base)")
            make_tiny_model(
                build / name, seed=seed, base=build / "base", noise=noise, dtype="bfloat16"
            )
        recipes_build = build / "recipes"
        recipes_build.mkdir()
        recipes = _demo_recipes()
        for name, text in recipes.items():
            (recipes_build / f"{name}.toml").write_text(text, encoding="utf-8")

        for name in (*DEMO_MODELS, "recipes"):
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            (build / name).rename(target)
        marker = {"format": _DEMO_FORMAT, "models": list(DEMO_MODELS), "recipes": list(recipes)}
        (root / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return DemoInfo(
        root,
        {name: root / name for name in DEMO_MODELS},
        {name: root / "recipes" / f"{name}.toml" for name in recipes},
        created=True,
    )
