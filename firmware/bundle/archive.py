"""Offline bundles: one archive carrying models, aliases and a hardware profile to a device.

Format (a POSIX tar, optionally gzip-compressed; members in this order):

    manifest.json      {"format": "edge-bundle", "version": 1, "models": [...], "aliases": {...},
                        "profile": name|null, "files": [{"path", "size", "sha256"}, ...]}
    manifest.sig       optional: raw 64-byte Ed25519 signature of manifest.json's exact bytes
    models/<file>.gguf every file listed in the manifest, regular files only
    profile.toml       optional: the hardware profile the bundle was made for

Reading (`extract_verified`) trusts nothing: the manifest comes first and is bounded; every later
member must be a regular file whose normalised relative name is listed in the manifest (no `..`,
no absolute path, no link, device, fifo or directory member), and its bytes are hashed while they
are written into a folder that is not live yet. Any mismatch, a missing file or a truncated
archive raises `ModelFormatError` and the caller throws the folder away.

Signing uses the `cryptography` package (imported only when a key is given).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from edge.errors import BadRequestError, DependencyMissingError, ModelFormatError, NotFoundError, OutputExistsError
from edge.fsio import atomic_file, sha256_file

FORMAT = "edge-bundle"
VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PROFILE = "profile.toml"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 256
CHUNK = 1 << 20
DEFAULT_ALIAS = "default"  # every bundle maps it (to its first model unless --alias default=... says otherwise)


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path inside the bundle and the slot, e.g. "models/smollm2-135m-q4_1.gguf"
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    models: tuple[str, ...]
    files: tuple[FileEntry, ...]
    aliases: dict = field(default_factory=dict)
    profile: str | None = None
    version: int = VERSION

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": self.version,
            "models": list(self.models),
            "aliases": self.aliases,
            "profile": self.profile,
            "files": [vars(f) for f in self.files],
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"not an edge bundle (format {data.get('format')!r})")
            if data.get("version") != VERSION:
                raise ValueError(
                    f"bundle format version {data.get('version')} is not supported (this edge reads {VERSION}); "
                    "upgrade edge on the device or make the bundle with this version"
                )
            files = tuple(FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
            aliases = data.get("aliases") or {}
            if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
                raise ValueError("aliases must be a table of strings")
            man = cls(tuple(str(m) for m in data["models"]), files, aliases, data.get("profile"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFormatError(f"bundle manifest is invalid: {e}") from None
        man.check()
        return man

    def check(self) -> None:
        if not self.files or len(self.files) > MAX_FILES:
            raise ModelFormatError(f"bundle manifest lists {len(self.files)} files (1..{MAX_FILES} allowed)")
        seen = set()
        for f in self.files:
            safe_member_name(f.path)
            if f.path in seen:
                raise ModelFormatError(f"bundle manifest lists {f.path} twice")
            if f.size < 0 or len(f.sha256) != 64:
                raise ModelFormatError(f"bundle manifest entry {f.path} has a bad size or sha256")
            seen.add(f.path)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def safe_member_name(name: str) -> str:
    """The name if it is a plain relative path into models/ or a known top-level file; else raises."""
    p = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or p.is_absolute()
        or any(part in ("..", ".", "") for part in name.split("/"))
    ):
        raise ModelFormatError(
            f"bundle member {name!r} has an unsafe path (absolute, `..` or empty parts); "
            "the bundle was not made by `edge bundle create`: refusing it"
        )
    if not (name == PROFILE or (len(p.parts) == 2 and p.parts[0] == "models" and p.suffix.lower() == ".gguf")):
        raise ModelFormatError(
            f"bundle member {name!r} is not a model (models/*.gguf) or {PROFILE}; refusing the bundle"
        )
    return name


# --- signing ---------------------------------------------------------------------------------


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise DependencyMissingError("signing needs the `cryptography` package: pip install cryptography") from None
    return serialization, ed25519


def generate_keypair(private: Path) -> Path:
    """Writes PRIVATE (PEM, mode 0600) and PRIVATE.pub (PEM); returns the public key path."""
    serialization, ed25519 = _crypto()
    public = Path(f"{private}.pub")
    for p in (private, public):
        if p.exists():
            raise OutputExistsError(f"{p} exists; choose another path or remove it")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return public


def sign(data: bytes, private: Path) -> bytes:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(private).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BadRequestError(
            f"cannot read the signing key {private}: {e}; make one with `edge bundle keygen`"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BadRequestError(f"{private} is not an Ed25519 private key; make one with `edge bundle keygen`")
    return key.sign(data)


def verify_signature(data: bytes, signature: bytes | None, public: Path) -> None:
    serialization, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise ModelFormatError(
            "the bundle is not signed and a signature is required; make it with `edge bundle create ... --sign KEY`"
        )
    try:
        key = serialization.load_pem_public_key(Path(public).read_bytes())
    except (OSError, ValueError) as e:
        raise BadRequestError(f"cannot read the public key {public}: {e}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BadRequestError(f"{public} is not an Ed25519 public key")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise ModelFormatError(
            "the bundle's signature does not match its manifest or this public key: "
            "it was altered or signed by someone else; refusing it"
        ) from None


# --- creating --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str  # store name, e.g. "smollm2:135m-q4_1"
    path: Path  # the .gguf file on this machine
    member: str  # "models/<file>.gguf"


def resolve_sources(models: list[str], store) -> list[Source]:
    """Store names or .gguf paths -> files; bundle member names follow the store's naming rule."""
    from edge.store import name_from_file

    out: list[Source] = []
    for spec in models:
        path = Path(spec).expanduser()
        if spec.lower().endswith(".gguf") and path.is_file():
            known = {Path(e.path).resolve(): e.name for e in store.list() if e.format == "gguf"}
            name = known.get(path.resolve()) or name_from_file(path.name)  # a file the store knows keeps its name
            if name is None:
                raise BadRequestError(f"{path.name} does not fit the store's naming rule (model-tag.gguf); rename it")
        else:
            entry = store.resolve(spec)
            if entry.format != "gguf":
                raise BadRequestError(f"{spec} is an ONNX folder; bundles carry GGUF files only")
            name, path = entry.name, Path(entry.path)
        member = f"models/{name.replace(':', '-')}.gguf"
        if any(s.member == member for s in out):
            raise BadRequestError(f"{spec} is given twice (as {name})")
        out.append(Source(name, path, member))
    if not out:
        raise BadRequestError("name at least one model to bundle")
    return out


def parse_aliases(pairs: list[str], models: list[str]) -> dict[str, str]:
    from edge.store import canonical

    aliases = {}
    for pair in pairs:
        alias, sep, target = pair.partition("=")
        if not sep or not alias.strip() or not target.strip():
            raise BadRequestError(f"--alias {pair!r}: write ALIAS=MODEL, e.g. llama3.1:8b=smollm2:135m-q4_1")
        target = canonical(target)
        if target not in models:
            raise BadRequestError(f"--alias {pair!r}: {target} is not in the bundle ({', '.join(models)})")
        aliases[canonical(alias)] = target
    aliases.setdefault(canonical(DEFAULT_ALIAS), models[0])  # what the service unit serves: `edge serve default`
    return aliases


def create(
    sources: list[Source],
    out: Path,
    *,
    aliases: dict | None = None,
    profile: Path | None = None,
    profile_name: str | None = None,
    sign_key: Path | None = None,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Manifest:
    """Hash the files, write the archive to a temporary name and rename it: a crash leaves no half bundle."""
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; remove it or pass --force")
    files = [(s.member, s.path) for s in sources] + ([(PROFILE, Path(profile))] if profile else [])
    entries = []
    for member, path in files:
        size = path.stat().st_size
        step = (lambda n, m=member, sz=size: progress(f"hashing {m}", n, sz)) if progress else None
        entries.append(FileEntry(member, size, sha256_file(path, step)))
    manifest = Manifest(tuple(s.name for s in sources), tuple(entries), dict(aliases or {}), profile_name)
    manifest.check()
    raw = manifest.to_bytes()
    mode: Literal["w:gz", "w"] = "w:gz" if out.name.endswith((".tar.gz", ".tgz")) else "w"
    with atomic_file(out, force=True) as tmp, tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST, raw)
        if sign_key:
            _add_bytes(tar, SIGNATURE, sign(raw, sign_key))
        for member, path in files:
            with open(path, "rb") as f:
                tar.addfile(_info(member, path.stat().st_size), f)
    return manifest


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, 0, tarfile.REGTYPE
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


# --- reading ---------------------------------------------------------------------------------


@dataclass
class Extracted:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes | None


def extract_verified(
    bundle: Path,
    dest: Path,
    *,
    pubkey: Path | None = None,
    require_signature: bool = False,
    before_files: Callable[[Manifest], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    on_member: Callable[[str], None] | None = None,
) -> Extracted:
    """Unpack `bundle` into the (new, empty, not live) folder `dest`, checking everything; see the module doc."""
    if not Path(bundle).is_file():
        raise NotFoundError(f"bundle {bundle} not found; check the path (is the USB stick mounted?)")
    try:
        with tarfile.open(bundle, "r|*") as tar:
            return _extract(tar, Path(dest), pubkey, require_signature, before_files, progress, on_member)
    except (tarfile.TarError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise ModelFormatError(f"bundle {bundle} is truncated or corrupt ({e}); copy it again") from None
    except OSError as e:
        if e.errno is None:  # gzip.BadGzipFile and friends
            raise ModelFormatError(f"bundle {bundle} is truncated or corrupt ({e}); copy it again") from None
        raise


def _extract(tar, dest, pubkey, require_signature, before_files, progress, on_member) -> Extracted:
    members = iter(tar)
    first = next(members, None)
    if first is None or first.name != MANIFEST or not first.isreg() or first.size > MAX_MANIFEST_BYTES:
        raise ModelFormatError(
            f"not an edge bundle: the first member must be {MANIFEST} (at most {MAX_MANIFEST_BYTES} bytes)"
        )
    raw = tar.extractfile(first).read()
    if len(raw) != first.size:
        raise ModelFormatError("bundle is truncated inside its manifest; copy it again")
    manifest = Manifest.from_bytes(raw)
    member = next(members, None)
    signature = None
    if member is not None and member.name == SIGNATURE and member.isreg() and member.size == 64:
        signature = tar.extractfile(member).read()
        member = next(members, None)
    if require_signature or pubkey:
        if pubkey is None:
            raise BadRequestError("--require-signature needs --pubkey KEY.pub to check the signature with")
        verify_signature(raw, signature, pubkey)
    if before_files:
        before_files(manifest)
    expected = {f.path: f for f in manifest.files}
    done: set[str] = set()
    while member is not None:
        _check_member(member, expected, done)
        _write_member(tar, member, expected[member.name], dest, progress, on_member)
        done.add(member.name)
        member = next(members, None)
    missing = sorted(set(expected) - done)
    if missing:
        raise ModelFormatError(f"bundle is truncated or incomplete: missing {', '.join(missing)}; copy it again")
    return Extracted(manifest, raw, signature)


def _check_member(member: tarfile.TarInfo, expected: dict, done: set) -> None:
    kind = (
        "link"
        if member.issym() or member.islnk()
        else "device"
        if member.isdev()
        else "directory"
        if member.isdir()
        else None
        if member.isreg()
        else "special file"
    )
    if kind:
        raise ModelFormatError(
            f"bundle member {member.name!r} is a {kind}; bundles hold regular files only: refusing it"
        )
    safe_member_name(member.name)
    if member.name not in expected:
        raise ModelFormatError(f"bundle member {member.name!r} is not listed in the manifest; refusing the bundle")
    if member.name in done:
        raise ModelFormatError(f"bundle member {member.name!r} appears twice; refusing the bundle")
    if member.size != expected[member.name].size:
        raise ModelFormatError(
            f"bundle member {member.name} has {member.size} bytes, the manifest says "
            f"{expected[member.name].size}; refusing the bundle"
        )


def _write_member(tar, member, entry: FileEntry, dest: Path, progress, on_member) -> None:
    target = dest / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    h, n = hashlib.sha256(), 0
    with open(target, "xb") as out:
        while block := src.read(CHUNK):
            h.update(block)
            out.write(block)
            n += len(block)
            if progress:
                progress(f"unpacking {entry.path}", len(block), entry.size)
            if on_member and n == len(block):
                on_member(entry.path)  # the fault-injection hook: a half-written file
        out.flush()
        os.fsync(out.fileno())
    if n != entry.size:
        raise ModelFormatError(f"bundle is truncated inside {entry.path} ({n} of {entry.size} bytes); copy it again")
    if h.hexdigest() != entry.sha256:
        raise ModelFormatError(
            f"{entry.path} in the bundle is corrupt (sha256 {h.hexdigest()[:16]}... instead of "
            f"{entry.sha256[:16]}...); copy the bundle again"
        )
