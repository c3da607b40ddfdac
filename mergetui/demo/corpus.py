"""The demo family's texts: English prose and Python code that ship with Python itself.

Prose is the language reference's running text as `pydoc` holds it (`pydoc_data.topics`) and the
standard library's docstrings, with grammar rules, headings, doctests and indented examples taken
out and each paragraph on one line. Code is the standard library's own modules with their
docstrings removed (`ast.unparse`, so comments go too and the layout is uniform). Both differ
between Python versions, so they were extracted once (`python -m mergetui.demo.corpus`) and ship in
`mergetui/data/demo_family/corpus/`; the family is trained on, and measured with, those files only.

Each domain is split by document (a pydoc topic, a module's docstrings, a module's code), so nothing
is in two splits:
- `base`: what the base model is trained on (both domains mixed);
- `tune`: what each fine-tune is trained on (its own domain: text the base never saw, as a real
  fine-tune's data is);
- `calib`: what a search scores candidates on (`recipes/evolve.toml`);
- `heldout`: what the demo's numbers are measured on, never trained or searched on.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from mergetui.resources import data_text

DOMAINS = ("prose", "code")
SPLITS = ("base", "tune", "calib", "heldout")
TRAIN_SPLITS = ("base", "tune")
CORPUS_PARTS = ("demo_family", "corpus")

# The documents held out of training, by name (prose: pydoc topics; code: modules).
HELD_DOCS = {
    "calib": {
        "prose": ("calls", "exceptions", "for", "while"),
        "code": ("csv", "graphlib", "sched"),
    },
    "heldout": {
        "prose": ("class", "import", "return", "slicings", "try", "with", "yield"),
        "code": ("fnmatch", "queue", "shlex", "textwrap"),
    },
}
# Size caps (characters): a few thousand tokens for the held-out splits, more to train on.
SPLIT_CHARS = {"base": 300_000, "tune": 300_000, "calib": 9_000, "heldout": 12_000}
# Standard library folders whose modules are not the library's own prose or code.
_SKIP_FOLDERS = {
    "__phello__",
    "ensurepip",
    "idlelib",
    "lib2to3",
    "site-packages",
    "test",
    "tests",
    "tkinter",
    "turtledemo",
}

_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}$")


def prose_paragraphs(topic_text: str) -> list[str]:
    """The running text of one pydoc topic or docstring: paragraphs reflowed to one line each.

    Left out: headings (a line underlined with *, =, -), indented blocks (grammar and examples),
    paragraphs with grammar rules (`::=`) or doctests (`>>>`), and short fragments.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", topic_text):
        lines = block.split("\n")
        if not lines or lines[0].startswith((" ", "\t")):
            continue
        if "::=" in block or ">>>" in block:
            continue
        if any(_HEADING_RULE.match(line.strip()) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        text = re.sub(r"^(\* |\d+\. )", "", text)
        text = re.sub(r"\s+", " ", text).strip()
        if len(text) >= 60 and text.endswith((".", ":", ")")):
            paragraphs.append(text)
    return paragraphs


def _docstrings(source: str) -> list[str]:
    """The paragraphs of a module's docstrings (module, classes, functions)."""
    paragraphs = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=True)
            if text:
                paragraphs += prose_paragraphs(text)
    return paragraphs


class _NoDocstrings(ast.NodeTransformer):
    """Drops docstrings (a body that was only a docstring gets `pass`)."""

    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip


def code_text(source: str) -> str:
    """A module's code without docstrings or comments, as `ast.unparse` lays it out."""
    tree = _NoDocstrings().visit(ast.parse(source))
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def stdlib_modules() -> dict[str, Path]:
    """This Python's standard library modules by dotted name (sorted), tests and tools left out."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = {}
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).with_suffix("").parts
        if _SKIP_FOLDERS & set(parts[:-1]) or any(p.startswith("_") for p in parts[:-1]):
            continue
        name = ".".join(p for p in parts if p != "__init__")
        if not name.startswith("_") or name == "__future__":
            modules[name] = path
    return dict(sorted(modules.items()))


def _read_all(paths: dict[str, Path], read: object) -> dict[str, object]:
    results = {}
    for name, path in paths.items():
        try:
            results[name] = read(path.read_text(encoding="utf-8"))  # type: ignore[operator]
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue
    return results


def extract_prose() -> dict[str, str]:
    """Every pydoc topic's running text by topic name, then each module's docstrings as
    `doc:MODULE` (this Python's; a paragraph seen before is skipped)."""
    from pydoc_data.topics import topics

    sources: dict[str, list[str]] = {
        name: prose_paragraphs(topics[name]) for name in sorted(topics)
    }
    for name, paragraphs in _read_all(stdlib_modules(), _docstrings).items():
        sources[f"doc:{name}"] = paragraphs  # type: ignore[assignment]
    seen: set[str] = set()
    documents = {}
    for name, paragraphs in sources.items():
        fresh = [p for p in paragraphs if p not in seen]
        seen.update(fresh)
        if fresh:
            documents[name] = "\n\n".join(fresh) + "\n"
    return documents


def extract_code() -> dict[str, str]:
    """Each standard library module's code (this Python's), by module name."""
    return {name: str(text) for name, text in _read_all(stdlib_modules(), code_text).items()}


def _cut(text: str, limit: int) -> str:
    """`text` up to `limit` characters, ending at a blank line (whole paragraphs or definitions)."""
    if len(text) <= limit:
        return text
    end = text.rfind("\n\n", 0, limit)
    return text[: end if end > 0 else limit].rstrip() + "\n"


def _shuffled(name: str) -> str:
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()


def split_documents(domain: str, documents: dict[str, str]) -> dict[str, str]:
    """The four splits of one domain's documents (see the module docstring).

    The held-out documents are named; the others, in a fixed shuffled order (by a hash of their
    names), alternate between `base` and `tune` until each is full, so both hold every kind of
    document from all over the library.
    """
    splits: dict[str, str] = {}
    held = set()
    for split, names in HELD_DOCS.items():
        held.update(names[domain])
        text = "".join(documents[name] for name in names[domain] if name in documents)
        splits[split] = _cut(text, SPLIT_CHARS[split])
    parts: dict[str, list[str]] = {"base": [], "tune": []}
    sizes = dict.fromkeys(parts, 0)
    rest = sorted((name for name in documents if name not in held), key=_shuffled)
    for index, name in enumerate(rest):
        split = TRAIN_SPLITS[index % 2]
        if sizes[split] + len(documents[name]) <= SPLIT_CHARS[split]:
            parts[split].append(documents[name])
            sizes[split] += len(documents[name]) + 1
    for split, texts in parts.items():
        splits[split] = "\n".join(texts)
    return splits


def write_corpora(out_dir: Path) -> dict[str, int]:
    """Extract both domains from this Python and write DOMAIN.SPLIT.txt files; sizes by file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for domain, documents in (("prose", extract_prose()), ("code", extract_code())):
        for split, text in split_documents(domain, documents).items():
            path = out_dir / f"{domain}.{split}.txt"
            path.write_text(text, encoding="utf-8")
            sizes[path.name] = len(text.encode())
    return sizes


def corpus_text(domain: str, split: str) -> str:
    """A shipped split of the demo corpus (`domain` in DOMAINS, `split` in SPLITS)."""
    if domain not in DOMAINS or split not in SPLITS:
        raise ValueError(f"no demo corpus {domain}.{split}")
    return data_text(*CORPUS_PARTS, f"{domain}.{split}.txt")


def main(argv: list[str] | None = None) -> int:
    """`python -m mergetui.demo.corpus [OUT]`: extract the corpora again from this Python."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parents[1].joinpath(*CORPUS_PARTS)
    for name, size in write_corpora(out).items():
        print(f"{out / name}: {size:,} bytes")
    print(f"(Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
