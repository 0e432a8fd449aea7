"""`edge bundle create | install | rollback | list | keygen`: thin commands over firmware.bundle.archive and firmware.bundle.installs."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Offline bundles: pack models for a device, install them atomically, roll back.",
)

HomeOpt = typer.Option(None, "--home", help="edge's folder on the device [env EDGE_HOME; default ~/.edge]")


def _home(home: Path | None) -> Path:
    from edge.config import edge_home

    return Path(home).expanduser() if home else edge_home()


def _progress():
    """A rich progress bar fed with (description, bytes done now, total bytes of the item)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
    )
    tasks: dict[str, TaskID] = {}

    def update(desc: str, n: int, total: int) -> None:
        if desc not in tasks:
            tasks[desc] = bar.add_task(desc, total=total)
        bar.advance(tasks[desc], n)

    return bar, update


@app.command()
def create(
    models: list[str] = typer.Argument(..., help="store names (smollm2:135m-q4_1, an alias...) or .gguf paths"),
    output: Path = typer.Option(..., "-o", "--output", help="bundle file to write (.tar, or .tar.gz to compress)"),
    alias: list[str] = typer.Option([], "--alias", help="ALIAS=MODEL, repeatable (e.g. llama3.1:8b=smollm2:135m-q4_1)"),
    profile: str | None = typer.Option(None, "--profile", help="hardware profile name or .toml the bundle is for"),
    sign: Path | None = typer.Option(None, "--sign", help="Ed25519 private key (PEM) from `edge bundle keygen`"),
    force: bool = typer.Option(False, "--force", help="overwrite OUTPUT"),
) -> None:
    """Pack models, aliases and a profile into one verifiable archive."""
    from edge.store import ModelStore
    from firmware.bundle import archive as bundle
    from profiles.profile import get_profile

    sources = bundle.resolve_sources(models, ModelStore())
    aliases = bundle.parse_aliases(alias, [s.name for s in sources])
    prof = get_profile(profile) if profile else None
    prof_path = _profile_path(profile, prof.name) if profile and prof else None
    bar, update = _progress()
    with bar:
        manifest = bundle.create(
            sources,
            output,
            aliases=aliases,
            profile=prof_path,
            profile_name=prof.name if prof else None,
            sign_key=sign,
            force=force,
            progress=update,
        )
    typer.echo(
        f"wrote {output}: {', '.join(manifest.models)} ({manifest.total_bytes / 2**20:.1f} MiB)"
        f"{', signed' if sign else ''}"
    )


def _profile_path(spec: str, name: str) -> Path:
    from profiles.profile import _profile_files

    return Path(spec) if spec.endswith(".toml") else _profile_files()[name]


@app.command()
def install(
    bundle_file: Path = typer.Argument(..., help="the bundle (e.g. on a USB stick)"),
    require_signature: bool = typer.Option(
        False, "--require-signature", help="refuse a bundle without a valid signature"
    ),
    pubkey: Path | None = typer.Option(None, "--pubkey", help="Ed25519 public key (PEM) to check the signature with"),
    keep: int = typer.Option(2, "--keep", min=1, help="install slots to keep (the active one included)"),
    home: Path | None = HomeOpt,
) -> None:
    """Verify, unpack into a new install slot, smoke-test, then switch to it atomically."""
    from firmware.bundle.installs import Installs

    bar, update = _progress()
    with bar:
        slot = Installs(_home(home)).install(
            bundle_file, pubkey=pubkey, require_signature=require_signature, keep=keep, progress=update
        )
    typer.echo(
        f"installed {', '.join(slot.models)} into install slot {slot.id}; it is active. "
        "Restart the service to serve it: systemctl restart edge"
    )


@app.command()
def rollback(home: Path | None = HomeOpt) -> None:
    """Make the previous whole install slot active again."""
    from firmware.bundle.installs import Installs

    slot = Installs(_home(home)).rollback()
    typer.echo(
        f"active install slot is now {slot.id} ({', '.join(slot.models)}); restart the service: systemctl restart edge"
    )


@app.command("list")
def list_installs(
    home: Path | None = HomeOpt,
    verify: bool = typer.Option(False, "--verify", help="also check every sha256 (reads every byte)"),
) -> None:
    """Install slots, the active one marked."""
    from firmware.bundle.installs import Installs

    installs = Installs(_home(home))
    for s in installs.list():
        state = "whole" if installs.whole(s.path, hashes=verify) else "DAMAGED"
        typer.echo(f"{'*' if s.active else ' '} {s.id}  {state:7}  {', '.join(s.models)}")


@app.command()
def keygen(
    private: Path = typer.Argument(..., help="private key file to write (PRIVATE.pub gets the public key)"),
) -> None:
    """Make an Ed25519 key pair for signing bundles."""
    from firmware.bundle.archive import generate_keypair

    typer.echo(f"wrote {private} (keep it secret) and {generate_keypair(private)} (copy it to the devices)")
