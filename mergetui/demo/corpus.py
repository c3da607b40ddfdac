"""The demo family's texts: English prose and Python code that ship with Python itself.

Prose is the language reference's running text as `pydoc` holds it (`pydoc_data.topics`), with its
grammar rules, headings and indented examples taken out and each paragraph on one line. Code is a
fixed list of pure-Python standard library modules with their docstrings removed (`ast.unparse`,
so comments go too and the layout is uniform). Both differ between Python versions, so they were
extracted once (`python -m mergetui.demo.corpus`) and ship in `mergetui/data/demo_family/corpus/`;
the family is trained on, and measured with, the shipped files only.

Each domain is split by document, so no held-out paragraph or function was trained on: `train`
(fine-tuning and base training), `calib` (what a search scores candidates on), `heldout` (what the
demo's numbers are measured on, never used for training or calibration).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from mergetui.resources import data_text

DOMAINS = ("prose", "code")
SPLITS = ("train", "calib", "heldout")
CORPUS_PARTS = ("demo_family", "corpus")

# Code: pure-Python standard library modules (sorted by name; the split below is by position).
CODE_MODULES = (
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "code",
    "codeop",
    "colorsys",
    "contextlib",
    "copy",
    "csv",
    "fnmatch",
    "fractions",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "heapq",
    "html/parser",
    "json/decoder",
    "json/encoder",
    "linecache",
    "numbers",
    "operator",
    "queue",
    "quopri",
    "random",
    "reprlib",
    "sched",
    "shlex",
    "statistics",
    "string",
    "textwrap",
    "timeit",
    "tokenize",
)
# Which documents (by name) are held out of training. Prose documents are pydoc topics.
CALIB_DOCS = {
    "prose": ("calls", "exceptions", "for", "while"),
    "code": ("csv", "graphlib", "sched"),
}
HELDOUT_DOCS = {
    "prose": ("class", "import", "return", "slicings", "try", "with", "yield"),
    "code": ("fnmatch", "queue", "shlex", "textwrap"),
}
# Size caps (characters) for the held-out splits: a few thousand tokens each.
SPLIT_CHARS = {"calib": 9_000, "heldout": 12_000}

_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}$")


def prose_paragraphs(topic_text: str) -> list[str]:
    """The running text of one pydoc topic: paragraphs reflowed to one line each.

    Left out: headings (a line underlined with *, =, -), indented blocks (grammar and examples),
    paragraphs with grammar rules (`::=`), and short fragments.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", topic_text):
        lines = block.split("\n")
        if not lines or lines[0].startswith((" ", "\t")):
            continue
        if len(lines) >= 2 and _HEADING_RULE.match(lines[1].strip()):
            continue
        if "::=" in block or any(_HEADING_RULE.match(line.strip()) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        text = re.sub(r"^(\* |\d+\. )", "", text)
        text = re.sub(r"\s+", " ", text).strip()
        if len(text) >= 60 and text.endswith((".", ":", ")")):
            paragraphs.append(text)
    return paragraphs


def extract_prose() -> dict[str, str]:
    """Every pydoc topic's running text, by topic name (this Python's)."""
    from pydoc_data.topics import topics

    documents = {}
    for name in sorted(topics):
        paragraphs = prose_paragraphs(topics[name])
        if paragraphs:
            documents[name] = "\n\n".join(paragraphs) + "\n"
    return documents


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


def extract_code() -> dict[str, str]:
    """CODE_MODULES' code from this Python's standard library, by module name."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        name: code_text((stdlib / f"{name}.py").read_text(encoding="utf-8"))
        for name in CODE_MODULES
    }


def _cut(text: str, limit: int, separator: str) -> str:
    """`text` up to `limit` characters, ending at a `separator` (a blank line: whole paragraphs,
    whole definitions)."""
    if len(text) <= limit:
        return text
    end = text.rfind(separator, 0, limit)
    return text[: end if end > 0 else limit].rstrip() + "\n"


def split_documents(domain: str, documents: dict[str, str]) -> dict[str, str]:
    """The three splits of one domain's documents (see the module docstring)."""
    held = {
        "calib": CALIB_DOCS[domain],
        "heldout": HELDOUT_DOCS[domain],
    }
    splits: dict[str, str] = {}
    for split, names in held.items():
        text = "".join(documents[name] for name in names if name in documents)
        splits[split] = _cut(text, SPLIT_CHARS[split], "\n\n")
    skipped = {name for names in held.values() for name in names}
    splits["train"] = "".join(
        documents[name] + ("\n" if domain == "prose" else "\n\n")
        for name in sorted(documents)
        if name not in skipped
    )
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
