"""`edge-quantize adapter SOURCE --base BASE --install NAME`: a LoRA adapter into the store.

SOURCE is a PEFT folder (converted here, checked against BASE as `convert_adapter` does) or a GGUF
adapter file (copied). Either way the GGUF adapter is first written beside its final place under a
temp name, checked by the same bounded validator the server runs (against BASE when it is a GGUF
model), and only then renamed to `$EDGE_HOME/adapters/NAME.gguf`: a failed or interrupted install
leaves nothing a server would list. `NAME.json` beside it records the base it was checked against;
the server then serves `base+NAME` for every GGUF model of the adapter's architecture.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge.errors import BadRequestError
from edge.formats.validate import validate_gguf_adapter
from edge.fsio import atomic_file, refuse_existing, write_atomic
from edge.store import ModelStore

from .adapter import convert_adapter


@dataclass(frozen=True)
class Installed:
    path: Path
    architecture: str
    rank: int
    alpha: float


def install_adapter(
    source: Path, base: Path, name: str, *, out_type: str = "f32", store: ModelStore | None = None, force: bool = False
) -> Installed:
    """Put the adapter at `source` into the store's adapters folder as `name`, validated first."""
    source, base = Path(source), Path(base)
    final = (store or ModelStore()).adapter_path(name)
    refuse_existing(final, force)
    base_gguf = base if base.is_file() else None
    if source.is_file() and base_gguf is None:
        raise BadRequestError(f"--base {base}: a GGUF adapter is checked against a GGUF model; give the .gguf file")
    if not source.exists():
        raise BadRequestError(f"{source} does not exist: give a PEFT folder or a GGUF adapter file")
    with atomic_file(final, force=force) as tmp:
        if source.is_dir():
            convert_adapter(source, base, tmp, out_type=out_type, force=True)
        else:
            shutil.copyfile(source, tmp)
        summary = validate_gguf_adapter(tmp, base_gguf)
        record = {"base": str(base.resolve()), "architecture": summary.architecture, "source": str(source.resolve())}
        write_atomic(final.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return Installed(final, summary.architecture, summary.rank, summary.alpha)
