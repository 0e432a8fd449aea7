#!/usr/bin/env python3
"""Render edge.service for a hardware profile: MemoryMax from the profile's memory budget.

    python firmware/systemd/make_unit.py --profile rpi5-8gb -o /etc/systemd/system/edge.service
    python firmware/systemd/make_unit.py --profile jetson-orin-nano-8gb --profile-path /var/lib/edge/current/profile.toml

The checked-in edge.service is this script's output for the `generic` profile (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing

from profiles.profile import get_profile  # noqa: E402


def render(profile_name: str, profile_arg: str | None = None) -> str:
    """The unit text. `profile_arg`: what ExecStart passes to --profile (default: the name)."""
    p = get_profile(profile_name)
    values = {
        "PROFILE": profile_arg or p.name,
        "DESCRIPTION": p.description,
        "BUDGET_GIB": f"{p.memory.budget_gib:g}",
        "TOTAL_GIB": f"{p.memory.total_gib:g}",
        "MEMORY_MAX": f"{int(p.memory.budget_gib * 1024)}M",
        # CUDA needs /dev/nvhost*, /dev/nvmap: a private /dev would hide the GPU
        "PRIVATE_DEVICES": "no" if p.gpu.kind == "cuda" else "yes",
    }
    text = (HERE / "edge.service.in").read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.search(r"@[A-Z_]+@", text)
    if left:
        raise SystemExit(f"unfilled placeholder {left[0]} in edge.service.in")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="generic", help="hardware profile name (edge profile list)")
    ap.add_argument("--profile-path", help="what the unit passes to `edge serve --profile` (default: the name)")
    ap.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    args = ap.parse_args(argv)
    text = render(args.profile, args.profile_path)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
