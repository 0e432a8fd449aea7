"""Install slots: `edge bundle install | rollback | list`, safe against power loss at any moment.

An install slot is one installed bundle (not a KV-cache slot of the engine).

Layout under $EDGE_HOME:

    slots/000007-<sha12>/      one installed bundle: models/, aliases.toml, profile.toml, manifest.json
    slots/.new-<id>/           being unpacked (a leftover of a crash; removed by the next install)
    slots/.trash-<id>/         being deleted (idem)
    current -> slots/<id>      THE active install slot: a relative symlink, only ever replaced by rename(2)

Install slot ids start with a counter, not a date: kiosks and Pis often boot without a real-time clock.

Install order, and why each crash point is harmless:
1. unpack into slots/.new-<id> while hashing every byte (firmware.bundle.archive.extract_verified); anything
   wrong -> the folder is removed, `current` was never touched;
2. write aliases.toml and manifest.json, fsync every file and the folder;
3. smoke test in a child process: load every model of the new folder and generate one token (a
   model that crashes llama.cpp kills the child, not the installer); failure -> the folder is
   removed and `current` still names the old slot (this is the roll back: the new slot never
   became active); success -> rename to slots/<id>, so every slot with an id passed its smoke
   test, and `rollback` can only ever pick a verified slot;
4. switch: symlink `.current.new` -> slots/<id>, rename it over `current`, fsync $EDGE_HOME;
5. prune: keep the newest `keep` slots (the active one always); a slot is renamed to .trash-
   first, so a half-deleted slot is never mistaken for a whole one.
Before step 4 the old slot is active and whole; after it, the new one is, verified and fsynced.

Test hook: $EDGE_BUNDLE_KILL_AT=<phase> sends SIGKILL to the installer itself at that phase
(PHASES lists them), so tests can prove the claim above at every point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import BadRequestError, DoesNotFitError, EdgeError, ModelFormatError, NotFoundError
from edge.fsio import fsync_dir, fsync_tree, sha256_file
from firmware.bundle.archive import MANIFEST, Manifest, extract_verified

PHASES = (
    "start",
    "manifest-read",
    "unpacking",
    "unpacked",
    "smoked",
    "slot-renamed",
    "link-made",
    "switched",
    "pruning",
    "done",
)
_SLOT_ID = re.compile(r"(\d{6})-([0-9a-f]{12})")
SMOKE_TIMEOUT_S = 900
SPACE_MARGIN = 64 << 20


def phase(name: str) -> None:
    """Fault injection for tests (see the module doc)."""
    assert name in PHASES, name
    if os.environ.get("EDGE_BUNDLE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class InstallSlot:
    """One installed bundle: slots/<id>, whether `current` names it, and its manifest."""

    id: str
    path: Path
    active: bool
    manifest: Manifest | None  # None: not readable (damaged)

    @property
    def models(self) -> tuple[str, ...]:
        return self.manifest.models if self.manifest else ()


class Installs:
    """The install slots under $EDGE_HOME: list, install, switch, roll back, prune."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.dir = self.home / "slots"
        self.current = self.home / "current"

    # -- reading ----------------------------------------------------------------------------
    def active_id(self) -> str | None:
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        name = Path(target).name
        return name if _SLOT_ID.fullmatch(name) else None

    def list(self) -> list[InstallSlot]:
        if not self.dir.is_dir():
            return []
        active = self.active_id()
        ids = sorted(p.name for p in self.dir.iterdir() if _SLOT_ID.fullmatch(p.name))
        return [InstallSlot(i, self.dir / i, i == active, _read_manifest(self.dir / i)) for i in ids]

    def whole(self, slot_dir: Path, *, hashes: bool = False) -> bool:
        """Every file of the install slot's manifest is there with its size (and sha256 when `hashes`)."""
        manifest = _read_manifest(slot_dir)
        if manifest is None:
            return False
        for f in manifest.files:
            p = slot_dir / f.path
            if not p.is_file() or p.stat().st_size != f.size or (hashes and sha256_file(p) != f.sha256):
                return False
        return True

    # -- installing -------------------------------------------------------------------------
    def install(
        self,
        bundle: Path,
        *,
        pubkey: Path | None = None,
        require_signature: bool = False,
        keep: int = 2,
        smoke: Callable[[Path], None] | None = None,
        progress=None,
    ) -> InstallSlot:
        if keep < 1:
            raise BadRequestError(f"--keep must be at least 1, got {keep}")
        phase("start")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._clean_leftovers()
        new_id = f"{self._next_number():06d}-{os.urandom(6).hex()}"
        tmp = self.dir / f".new-{new_id}"
        tmp.mkdir()
        try:
            self._unpack(bundle, tmp, pubkey, require_signature, progress)
            (smoke or smoke_test)(tmp)
            phase("smoked")
            os.rename(tmp, self.dir / new_id)  # only smoke-tested slots ever get a slot id
            fsync_dir(self.dir)
            phase("slot-renamed")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.switch(new_id)
        self.prune(keep)
        phase("done")
        return next(s for s in self.list() if s.id == new_id)

    def _unpack(self, bundle, tmp, pubkey, require_signature, progress) -> None:
        def before_files(manifest: Manifest) -> None:
            phase("manifest-read")
            free = shutil.disk_usage(self.dir).free
            if free < manifest.total_bytes + SPACE_MARGIN:
                raise DoesNotFitError(
                    f"not enough disk space for the bundle: {manifest.total_bytes / 2**20:.0f} MiB "
                    f"needed, {free / 2**20:.0f} MiB free in {self.dir}; free space (an older "
                    "install slot goes with `edge bundle install --keep 1` of a smaller bundle)"
                )

        got = extract_verified(
            bundle,
            tmp,
            pubkey=pubkey,
            require_signature=require_signature,
            before_files=before_files,
            progress=progress,
            on_member=lambda _: phase("unpacking"),
        )
        (tmp / "aliases.toml").write_bytes(_aliases_toml(got.manifest.aliases))
        (tmp / MANIFEST).write_bytes(got.manifest_bytes)
        fsync_tree(tmp)
        phase("unpacked")

    def switch(self, slot_id: str) -> None:
        """Make slots/<slot_id> the active install slot with one rename(2)."""
        if not self.whole(self.dir / slot_id):
            raise ModelFormatError(f"install slot {slot_id} is not whole; refusing to switch to it")
        link = self.home / ".current.new"
        link.unlink(missing_ok=True)
        os.symlink(f"slots/{slot_id}", link)
        phase("link-made")
        os.replace(link, self.current)
        fsync_dir(self.home)
        phase("switched")

    def rollback(self) -> InstallSlot:
        """Switch to the newest whole install slot older than the active one."""
        active = self.active_id()
        older = [s for s in self.list() if not s.active and (active is None or s.id < active) and self.whole(s.path)]
        if not older:
            raise NotFoundError(
                "there is no earlier whole install slot to roll back to (`edge bundle list` shows the install slots)"
            )
        self.switch(older[-1].id)
        return next(s for s in self.list() if s.id == older[-1].id)

    def prune(self, keep: int) -> None:
        phase("pruning")
        slots = self.list()
        doomed = [s for s in slots[: max(0, len(slots) - keep)] if not s.active]
        for s in doomed:
            self._discard(s.id)

    # -- housekeeping -----------------------------------------------------------------------
    def _discard(self, slot_id: str) -> None:
        trash = self.dir / f".trash-{slot_id}"
        os.rename(self.dir / slot_id, trash)
        fsync_dir(self.dir)
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_leftovers(self) -> None:
        for p in self.dir.iterdir():
            if p.name.startswith((".new-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)
        (self.home / ".current.new").unlink(missing_ok=True)

    def _next_number(self) -> int:
        numbers = [int(m[1]) for p in self.dir.iterdir() if (m := re.match(r"\.?(?:new-|trash-)?(\d{6})-", p.name))]
        return max(numbers, default=0) + 1


def _read_manifest(slot_dir: Path) -> Manifest | None:
    try:
        return Manifest.from_bytes((slot_dir / MANIFEST).read_bytes())
    except (OSError, EdgeError):
        return None


def _aliases_toml(aliases: dict) -> bytes:
    return "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in sorted(aliases.items())).encode()


# --- smoke test ------------------------------------------------------------------------------


def smoke_test(slot_dir: Path) -> None:
    """Load every model of the install slot in a child process and generate one token; raises on failure."""
    cmd = [sys.executable, "-m", "firmware.bundle.installs", "smoke", str(slot_dir)]
    rc: int | str
    with tempfile.TemporaryFile() as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=SMOKE_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        log.seek(0)
        tail = log.read()[-2000:].decode(errors="replace").strip()
    if rc != 0:
        raise ModelFormatError(
            f"the new bundle failed its smoke test (exit {rc}): {tail.splitlines()[-1] if tail else 'no output'}; "
            "the active install slot is unchanged"
        )


def _smoke_main(slot_dir: Path) -> None:
    from edge.engine import open_engine
    from edge.server.supervision import self_test

    manifest = _read_manifest(slot_dir)
    if manifest is None:
        raise ModelFormatError(f"{slot_dir} has no readable manifest")
    for f in manifest.files:
        if f.path.startswith("models/"):
            engine = open_engine(slot_dir / f.path, name=Path(f.path).stem, n_ctx=256, n_parallel=1, n_threads=1)
            try:
                self_test(engine)
            finally:
                engine.close()
            print(f"smoke ok: {f.path}", flush=True)


if __name__ == "__main__":  # `python -m firmware.bundle.installs smoke SLOT_DIR` (the child of smoke_test)
    from edge.errors import report_and_exit

    try:
        if sys.argv[1:2] != ["smoke"] or len(sys.argv) != 3:
            raise BadRequestError("usage: python -m firmware.bundle.installs smoke SLOT_DIR")
        _smoke_main(Path(sys.argv[2]))
    except BaseException as exc:
        report_and_exit(exc)
