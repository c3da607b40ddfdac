"""The model card that goes up with a pushed folder: its front matter names the merge's parents.

The Hub draws a model tree from `base_model` in README.md's YAML front matter. A folder whose card
lacks it (or has no card) gets one: the parents, `base_model_relation: merge`, the library and the
`merge` and `mergetui` tags, ahead of the card's own text. The front matter is read with mergetui's
bounded YAML loader, so a card whose aliases expand without end is refused before the push.

Why not `huggingface_hub.ModelCard`: it parses front matter with plain `yaml.safe_load` (no bound on
alias expansion, so this module would have to parse the card twice), raises on a front matter that
is not valid YAML or not a mapping (which a push replaces), and its `ModelCardData` rewrites a
card's `model-index` and moves it after the other keys. docs/checkpoints.md has the details.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"


def card_with_parents(folder: Path, parents: Sequence[str] = ()) -> str | None:
    """The model card to upload when the folder's own needs `base_model` added (or is missing);
    None when the folder's README.md can go as it is. `parents` are the merge's Hub parents."""
    readme = folder / CARD_FILE
    text = readme.read_text(encoding="utf-8") if readme.is_file() else None
    front, body = split_front_matter(text or "", str(readme))
    if text is not None and (front.get("base_model") or not parents):
        return None
    if parents:
        front["base_model"] = list(parents)
        front.setdefault("base_model_relation", "merge")
    front.setdefault("library_name", "transformers")
    tags = list(front.get("tags") or [])
    for tag in ("merge", "mergetui"):
        if tag not in tags:
            tags.append(tag)
    front["tags"] = tags
    if not body:
        body = f"# {folder.name}\n\nA merge of pre-trained language models made with mergetui.\n"
    import yaml

    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n" + body


def split_front_matter(text: str, source: str) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a Markdown card; ({}, text) without a front matter block, and an
    empty front matter when the block is not a YAML mapping. A block past the YAML limits is a
    `UserError` located in `source`."""
    import yaml

    from mergetui.bounded_yaml import LimitExceeded, bounded_loader

    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end == -1:
        return {}, text
    try:
        loaded = yaml.load(text[4:end], Loader=bounded_loader(yaml.SafeLoader)) or {}
    except LimitExceeded as exc:
        raise exc.located(source) from None
    except yaml.YAMLError:
        loaded = {}
    return (loaded if isinstance(loaded, dict) else {}), text[end + 4 :].lstrip("\n")
