"""Text to calibrate pruning and to train students on, checked before any work starts.

The default is the bundled model's own training text (CPython's stdlib docstrings, held-out
files excluded: ``latlab.assets.corpus``), so nothing a recipe fits ever sees the held-out
text the quality gate scores on. Users pass text files or directories of them instead; an
empty file, a binary file or a missing path is refused with its name before any training.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError

BUNDLED = "bundled training text"
# A directory is read for these suffixes (a file given by name is read whatever its suffix).
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", "")
_SNIFF_BYTES = 8192


@dataclass(kw_only=True, slots=True)
class CorpusText:
    """Documents and where they came from (recorded in reports and checkpoints)."""

    texts: list[str]
    source: str  # BUNDLED or the paths as given
    files: list[str] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(len(t) for t in self.texts)

    def spread(self, max_chars: int) -> CorpusText:
        """Documents at an even stride through the corpus, about ``max_chars`` in all: enough
        calibration text drawn from all of it, without tokenizing megabytes for 16 windows."""
        if self.chars <= max_chars:
            return self
        stride = max(1, round(self.chars / max_chars))
        return CorpusText(texts=self.texts[::stride], source=self.source, files=self.files)

    def fingerprint(self) -> str:
        """A short hash of the content: a resumed run refuses a corpus that changed."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        return digest.hexdigest()[:16]


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            raise ConfigError(
                f"corpus directory {path} holds no text files ({', '.join(TEXT_SUFFIXES[:-1])})"
            )
        return found
    if not path.exists():
        raise ConfigError(f"corpus path {path} does not exist")
    return [path]


def read_text_file(path: Path) -> str:
    """The file as UTF-8 text; ConfigError when it is empty, binary or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read corpus file {path}: {exc.strerror or exc}") from exc
    if b"\0" in data[:_SNIFF_BYTES]:
        raise ConfigError(f"corpus file {path} is not text (it holds NUL bytes): give text files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"corpus file {path} is not UTF-8 text (bad byte at offset {exc.start}): "
            "give UTF-8 text files"
        ) from None
    if not text.strip():
        raise ConfigError(f"corpus file {path} is empty")
    return text


def load_corpus(paths: Sequence[str | os.PathLike[str]] | None = None) -> CorpusText:
    """The user's text files (files or directories), or the bundled training text."""
    if not paths:
        from latlab.assets.corpus import training_texts

        return CorpusText(texts=training_texts(), source=BUNDLED)
    files = [f for p in paths for f in _files_of(Path(p).expanduser())]
    texts = [read_text_file(f) for f in files]
    return CorpusText(texts=texts, source=", ".join(map(str, paths)), files=[str(f) for f in files])


def token_stream(tokenizer: Any, corpus: CorpusText, min_tokens: int) -> Any:
    """The corpus as one token tensor; ConfigError when it is shorter than ``min_tokens``."""
    from latlab.compress.training import encode_documents

    stream = encode_documents(tokenizer, corpus.texts)
    if len(stream) < min_tokens:
        raise ConfigError(
            f"the corpus ({corpus.source}) has {len(stream)} tokens; at least {min_tokens} are "
            "needed (one training window plus its target): give more text"
        )
    return stream
