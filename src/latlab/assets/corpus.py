"""The bundled model's text: CPython's own standard-library docstrings, split train / held out.

One implementation for both users of the split: ``scripts/train_tiny_model.py`` trains the
bundled model on ``build_corpus()[0]`` and scores it on ``[1]``; ``latlab distill`` and the
pruning recipes calibrate and train on the *train* part only, so the held-out documents (and
``heldout.txt``, cut from them) stay unseen by anything latlab fits.

Nothing is imported or executed: files are parsed with ``ast``. Files are split by a seeded
hash of their path relative to the stdlib, so the split does not depend on file order.
Reading the stdlib takes seconds of CPU; ``training_texts()`` caches the result on disk.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Directories whose docstrings are test scaffolding or vendored code, not documentation.
SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
)
TOPICS_FILE = Path("pydoc_data") / "topics.py"
MIN_TOPIC_CHARS = 200
MIN_DOCSTRING_CHARS = 20
# The split the shipped model was trained with (docs/tiny-model.md).
SEED = 0
HELDOUT_FRACTION = 0.05


@dataclass(slots=True)
class Document:
    """One document: a docstring (or topic text) and the file it came from."""

    source: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_python_files(root: Path) -> Iterator[Path]:
    """Every .py file of the stdlib outside SKIP_DIRS, in sorted (deterministic) order."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not any(part in SKIP_DIRS for part in rel.parts):
            yield path


def _docstrings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc.strip()) >= MIN_DOCSTRING_CHARS:
                yield doc.strip()


def _topic_strings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
            if len(text) >= MIN_TOPIC_CHARS:
                yield text


def documents_of(path: Path, rel: Path) -> list[Document]:
    """Documents of one file; unreadable or unparsable files give none (a few are py2 relics)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    texts = _topic_strings(tree) if rel == TOPICS_FILE else _docstrings(tree)
    return [Document(str(rel), text) for text in texts]


def is_heldout(rel: str, seed: int, fraction: float) -> bool:
    """Seeded, order-independent split by file: hash(seed, path) decides."""
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_corpus(
    seed: int = SEED, heldout_fraction: float = HELDOUT_FRACTION
) -> tuple[list[Document], list[Document]]:
    """(train, heldout) documents. The big topics file always trains (it is one file)."""
    root = stdlib_root()
    train: list[Document] = []
    heldout: list[Document] = []
    for path in iter_python_files(root):
        rel = path.relative_to(root)
        docs = documents_of(path, rel)
        held = rel != TOPICS_FILE and is_heldout(str(rel), seed, heldout_fraction)
        (heldout if held else train).extend(docs)
    return train, heldout


def _cache_file(part: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    name = f"stdlib-{part}-py{platform.python_version()}-seed{SEED}-{HELDOUT_FRACTION}.json"
    return Path(base) / "latlab" / "corpus" / name


def _texts(part: str) -> list[str]:
    """The documents of one part, read from the disk cache or built (and cached) once."""
    cache = _cache_file(part)
    try:
        texts = json.loads(cache.read_text(encoding="utf-8"))
        if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
            return texts
    except (OSError, ValueError):
        pass
    train, heldout = build_corpus()
    parts = {"train": [d.text for d in train], "heldout": [d.text for d in heldout]}
    for key, value in parts.items():
        try:
            target = _cache_file(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(value), encoding="utf-8")
            os.replace(tmp, target)
        except OSError:
            pass  # a read-only home still works, only slower
    return parts[part]


def training_texts() -> list[str]:
    """The bundled model's training documents (held-out files excluded), in file order."""
    return _texts("train")


def heldout_texts() -> list[str]:
    """The held-out documents the bundled model never saw (heldout.txt is cut from these)."""
    return _texts("heldout")
