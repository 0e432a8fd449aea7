"""`edge bundle create | install | rollback | list`: what an operator with a USB stick sees."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from edge.errors import ModelFormatError
from edge.store import ModelStore
from firmware.bundle.archive import MANIFEST, FileEntry, Manifest, extract_verified
from firmware.bundle.installs import Installs
from tests.support.live import edge_cli


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _manifest(files: dict[str, bytes]) -> bytes:
    return Manifest(("fake:1",), tuple(FileEntry(p, len(d), _sha(d)) for p, d in files.items())).to_bytes()


def _assert_active_whole(home: Path) -> str:
    """The active slot's every file matches its manifest's sha256, and the store resolves its model."""
    installs = Installs(home)
    active = installs.active_id()
    assert active is not None, "no active slot"
    assert installs.whole(installs.dir / active, hashes=True), f"active slot {active} is not whole"
    entry = ModelStore(home).resolve("smollm2:135m-q4_1")
    assert Path(entry.path).resolve().is_relative_to((home / "slots" / active).resolve())
    return active


# --- the happy path -------------------------------------------------------------------------------


@pytest.mark.slow
def test_install_serves_the_active_slot_and_keeps_n(tmp_path, smollm2_bundle, smollm2_path):
    home = tmp_path / "home"
    out = edge_cli(home, "bundle", "install", smollm2_bundle)
    assert "into install slot" in out.stdout
    first = _assert_active_whole(home)
    store = ModelStore(home)
    assert store.resolve("robot").name == "smollm2:135m-q4_1"  # the bundle's alias
    assert store.resolve("default").name == "smollm2:135m-q4_1"  # every bundle maps "default"
    assert (home / "current" / "profile.toml").read_bytes() == (
        Path(__file__).parents[2] / "profiles" / "data" / "rpi5-8gb.toml"
    ).read_bytes()
    assert (home / "current" / "models" / "smollm2-135m-q4_1.gguf").read_bytes() == smollm2_path.read_bytes()

    edge_cli(home, "bundle", "install", smollm2_bundle, "--keep", "2")
    edge_cli(home, "bundle", "install", smollm2_bundle, "--keep", "2")
    ids = [s.id for s in Installs(home).list()]
    assert len(ids) == 2 and first not in ids  # the oldest went
    third = _assert_active_whole(home)
    assert third == ids[-1]
    listing = edge_cli(home, "bundle", "list", "--verify").stdout
    assert f"* {third}  whole" in listing and f"  {ids[0]}  whole" in listing

    edge_cli(home, "bundle", "rollback")
    assert _assert_active_whole(home) == ids[0]
    err = edge_cli(home, "bundle", "rollback", check=False)
    assert err.returncode == 3 and "no earlier whole install slot" in err.stderr


def test_operator_aliases_win_over_the_bundle(tmp_path, smollm2_bundle):
    home = tmp_path / "home"
    edge_cli(home, "bundle", "install", smollm2_bundle)
    (home / "aliases.toml").write_text('"robot" = "gemma3:270m-q4_k_m"\n')
    store = ModelStore(home)
    assert store.aliases()["robot:latest"] == "gemma3:270m-q4_k_m"
    assert store.aliases()["default:latest"] == "smollm2:135m-q4_1"


@pytest.mark.slow
def test_signed_bundles(tmp_path, smollm2_path, smollm2_bundle):
    home, key = tmp_path / "home", tmp_path / "keys" / "signer"
    key.parent.mkdir()
    edge_cli(home, "bundle", "keygen", key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    signed = tmp_path / "signed.tar"
    edge_cli(home, "bundle", "create", smollm2_path, "-o", signed, "--sign", key)
    pub = Path(f"{key}.pub")

    unsigned = edge_cli(home, "bundle", "install", smollm2_bundle, "--require-signature", "--pubkey", pub, check=False)
    assert unsigned.returncode == 4 and "not signed" in unsigned.stderr
    assert not (home / "current").exists()

    other = tmp_path / "keys" / "other"
    edge_cli(home, "bundle", "keygen", other)
    wrong = edge_cli(home, "bundle", "install", signed, "--require-signature", "--pubkey", f"{other}.pub", check=False)
    assert wrong.returncode == 4 and "signature does not match" in wrong.stderr
    assert not (home / "current").exists()

    edge_cli(home, "bundle", "install", signed, "--require-signature", "--pubkey", pub)
    _assert_active_whole(home)


@pytest.mark.slow
def test_smoke_failure_leaves_the_old_slot_active(tmp_path, smollm2_bundle):
    """A file that hashes right but is no model: the smoke test fails, nothing switches."""
    home = tmp_path / "home"
    edge_cli(home, "bundle", "install", smollm2_bundle)
    before = _assert_active_whole(home)
    junk = tmp_path / "junk-1.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 4096)
    bad = tmp_path / "bad.tar"
    edge_cli(home, "bundle", "create", junk, "-o", bad)
    out = edge_cli(home, "bundle", "install", bad, check=False)
    assert out.returncode == 4 and "smoke test" in out.stderr and "active install slot is unchanged" in out.stderr
    assert _assert_active_whole(home) == before
    assert [s.id for s in Installs(home).list()] == [before]


# --- refusals: nothing changes ---------------------------------------------------------------------


def _refused(home: Path, bundle: Path, expect: str) -> None:
    before = sorted(p.name for p in (home / "slots").iterdir()), os.readlink(home / "current")
    out = edge_cli(home, "bundle", "install", bundle, check=False)
    assert out.returncode == 4, out.stderr
    assert expect in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert (sorted(p.name for p in (home / "slots").iterdir()), os.readlink(home / "current")) == before
    _assert_active_whole(home)


@pytest.fixture(scope="session")
def installed_template(tmp_path_factory, smollm2_bundle) -> Path:
    home = tmp_path_factory.mktemp("installed") / "home"
    edge_cli(home, "bundle", "install", smollm2_bundle)
    return home


@pytest.fixture()
def installed_home(tmp_path, installed_template) -> Path:
    """A home with one installed slot; slot files are never written in place, so hard links are safe."""
    home = tmp_path / "home"
    shutil.copytree(installed_template, home, symlinks=True, copy_function=os.link)
    return home


def test_corrupted_byte_is_refused(tmp_path, installed_home, smollm2_bundle):
    data = bytearray(smollm2_bundle.read_bytes())
    data[len(data) // 2] ^= 0x01  # a byte inside the model's data
    bad = tmp_path / "flipped.tar"
    bad.write_bytes(bytes(data))
    _refused(installed_home, bad, "is corrupt (sha256")


def test_truncated_archive_is_refused(tmp_path, installed_home, smollm2_bundle):
    with tarfile.open(smollm2_bundle) as tar:
        last = tar.getmembers()[-1]  # profile.toml; after it only zero padding, which carries no data
    for cut in (300, 2000, smollm2_bundle.stat().st_size // 2, last.offset_data + 100):
        bad = tmp_path / f"cut-{cut}.tar"
        bad.write_bytes(smollm2_bundle.read_bytes()[:cut])
        _refused(installed_home, bad, "truncated")


@pytest.mark.parametrize("name", ["models/../../evil.gguf", "/tmp/evil.gguf", "../evil.gguf", "models/./x.gguf"])
def test_unsafe_member_names_are_refused(tmp_path, installed_home, name):
    data = b"GGUF-payload"
    manifest = _manifest({"models/x-1.gguf": data})
    bad = _tar(tmp_path / "bad.tar", [_reg(MANIFEST, manifest), _reg(name, data)])
    _refused(installed_home, bad, "unsafe path")
    assert not (tmp_path / "evil.gguf").exists() and not Path("/tmp/evil.gguf").exists()


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE]
)
def test_links_devices_and_directories_are_refused(tmp_path, installed_home, kind):
    manifest = _manifest({"models/x-1.gguf": b"data"})
    info = tarfile.TarInfo("models/x-1.gguf")
    info.type, info.linkname = kind, "/etc/shadow"
    bad = _tar(tmp_path / "bad.tar", [_reg(MANIFEST, manifest), (info, None)])
    _refused(installed_home, bad, "regular files only")


def test_unlisted_and_manifestless_members_are_refused(tmp_path, installed_home):
    data = b"payload"
    extra = _tar(
        tmp_path / "extra.tar",
        [
            _reg(MANIFEST, _manifest({"models/x-1.gguf": data})),
            _reg("models/x-1.gguf", data),
            _reg("models/y-1.gguf", data),
        ],
    )
    _refused(installed_home, extra, "not listed in the manifest")
    nomanifest = _tar(tmp_path / "nomanifest.tar", [_reg("models/x-1.gguf", data)])
    _refused(installed_home, nomanifest, "first member must be manifest.json")
    lying = _tar(
        tmp_path / "lying.tar",
        [
            _reg(
                MANIFEST,
                json.dumps(
                    {
                        "format": "edge-bundle",
                        "version": 1,
                        "models": [],
                        "files": [{"path": "../x.gguf", "size": 1, "sha256": "0" * 64}],
                    }
                ).encode(),
            )
        ],
    )
    _refused(installed_home, lying, "unsafe path")


def test_extract_never_writes_outside_dest(tmp_path):
    """The library call on its own: a refused bundle leaves only what the caller throws away."""
    data = b"x"
    bad = _tar(tmp_path / "bad.tar", [_reg(MANIFEST, _manifest({"models/x-1.gguf": data})), _reg("../x-1.gguf", data)])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ModelFormatError):
        extract_verified(bad, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "dest"]


def test_gzip_bundle_round_trip(tmp_path):
    """.tar.gz bundles (library level, a stand-in file and no smoke test: the format, not the model)."""
    from firmware.bundle.archive import Source, create

    model = tmp_path / "tiny-1.gguf"
    model.write_bytes(os.urandom(100_000))
    out = tmp_path / "b.tar.gz"
    create([Source("tiny:1", model, "models/tiny-1.gguf")], out, aliases={"default:latest": "tiny:1"})
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    slot = Installs(tmp_path / "home").install(out, smoke=lambda path: None)
    assert (slot.path / "models" / "tiny-1.gguf").read_bytes() == model.read_bytes()
    assert ModelStore(tmp_path / "home").resolve("default").name == "tiny:1"


def test_not_enough_disk_space_changes_nothing(tmp_path, installed_home, smollm2_bundle, monkeypatch):
    import collections

    import firmware.bundle.installs as installs_mod
    from edge.errors import DoesNotFitError

    before = os.readlink(installed_home / "current")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(installs_mod.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 10 << 20))
    with pytest.raises(DoesNotFitError, match="not enough disk space"):
        Installs(installed_home).install(smollm2_bundle, smoke=lambda p: None)
    assert os.readlink(installed_home / "current") == before
    assert not [p for p in (installed_home / "slots").iterdir() if p.name.startswith(".")]
