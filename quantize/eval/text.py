"""The evaluation text: which text is measured on (--eval-text, else one that ships with the machine
or a dependency), read as llama-perplexity -f reads it, and cut into ctx-token chunks."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import BadRequestError, NotFoundError
from edge.fsio import sha256_file

DEBIAN_GPL3 = Path("/usr/share/common-licenses/GPL-3")
# Fallbacks, in order: license texts shipped inside installed Python distributions (they are on
# every machine that can run edge-quantize). Long ones first: the text must fill >= 2 chunks.
PACKAGE_LICENSES = (
    ("numpy", "LICENSE.txt"),
    ("torch", "LICENSE"),
    ("llama_cpp_python", "LICENSE.md"),
    ("rich", "LICENSE"),
    ("typer", "LICENSE"),
)
DEFAULT_TEXT_CHAIN = (
    "Debian's /usr/share/common-licenses/GPL-3, else the longest license text shipped "
    "by one of the installed packages " + ", ".join(p for p, _ in PACKAGE_LICENSES)
)


@dataclass(frozen=True)
class EvalText:
    path: Path
    origin: str  # "--eval-text", "debian common-licenses", "package <name>"
    sha256: str
    size_bytes: int

    @classmethod
    def from_file(cls, path: Path, origin: str) -> EvalText:
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"evaluation text {path} does not exist: give a UTF-8 text file with --eval-text")
        return cls(path, origin, sha256_file(path), path.stat().st_size)

    def read(self) -> bytes:
        """The text as llama-perplexity -f reads it (one trailing newline dropped)."""
        data = self.path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError(f"evaluation text {self.path} is not UTF-8 ({exc}); convert it first") from None
        return data[:-1] if data.endswith(b"\n") else data


def default_eval_text() -> EvalText:
    """A text that ships with the machine or a dependency (see DEFAULT_TEXT_CHAIN)."""
    if DEBIAN_GPL3.is_file():
        return EvalText.from_file(DEBIAN_GPL3, "debian common-licenses (GPL-3)")
    found: list[tuple[int, Path, str]] = []
    for dist_name, file_name in PACKAGE_LICENSES:
        try:
            files = importlib.metadata.distribution(dist_name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == file_name:
                path = Path(f.locate())
                if path.is_file():
                    found.append((path.stat().st_size, path, f"package {dist_name} ({file_name})"))
    if not found:
        raise NotFoundError(
            f"no default evaluation text found (looked for {DEFAULT_TEXT_CHAIN}); give one with --eval-text FILE"
        )
    _, path, origin = max(found, key=lambda x: x[0])
    return EvalText.from_file(path, origin)


def chunks(tokens: np.ndarray, ctx: int, bos: int | None) -> Iterator[np.ndarray]:
    """Consecutive ctx-token chunks (tail dropped); the first token of each is BOS when given."""
    for i in range(len(tokens) // ctx):
        chunk = tokens[i * ctx : (i + 1) * ctx].copy()  # (ctx,)
        if bos is not None:
            chunk[0] = bos
        yield chunk
