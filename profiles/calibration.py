"""Measured speed on this device (`edge bench`), kept per device and model, read by the planner.

`edge bench` measures generation and prompt speed of one model file with a profile's threads and
records it here; `profiles.plan.planner` then predicts generation speed from these records instead of
the profile's nominal bandwidth x efficiency, and says so. A record is a measurement of one file;
what generalises to other quantization types of the same model, and to other models, is the
speed model the planner fits to the records (`profiles.plan.planner.SpeedModel`).

One JSON file per device, `EDGE_HOME/calibration/<device>.json`, written atomically (edge.fsio):

    {"format": "edge-calibration", "version": 1, "device": {"id": ..., "cpu": ..., "arch": ...},
     "records": [{"model": key, "profile": name, "type": "Q4_1", "threads": 2, "n_ctx": 2048,
                  "parallel": 1, "tg_tps": 171.2, "pp_tps": 812.0, "bytes_by_type": {"Q4_1": ..., "Q8_0": ...},
                  "kv_read_bytes": ..., "n_layer": 30, "file": path, "measured_at": ISO time}, ...]}

A file that cannot be read or does not have this shape is ignored with a warning: the planner falls
back to the nominal figures, never fails because of it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edge.config import edge_home
from edge.fsio import write_atomic

log = logging.getLogger("profiles.calibration")

FORMAT, VERSION = "edge-calibration", 1


@dataclass(frozen=True)
class Record:
    """One `edge bench` run: one model file on this device with one profile's settings."""

    model: str  # model_key(shape): the same for every quantization of one model
    profile: str  # the profile whose threads were used; the planner uses records of its profile only
    type: str  # quantization of the measured file (its ftype name, e.g. "Q4_1")
    threads: int
    n_ctx: int
    parallel: int
    tg_tps: float  # generation tokens/s (all slots together when parallel > 1)
    pp_tps: float  # prompt tokens/s
    bytes_by_type: dict[str, int]  # weight bytes read per generated token, per ggml type
    kv_read_bytes: int  # KV cache bytes read per token at the planner's speed position
    n_layer: int
    file: str = ""
    measured_at: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        names = {f.name for f in fields(cls)}
        missing = names - set(d) - {"file", "measured_at"}
        if missing:
            raise ValueError(f"record lacks {sorted(missing)}")
        rec = cls(**{k: v for k, v in d.items() if k in names})
        sizes = rec.bytes_by_type
        if not isinstance(sizes, dict) or not sizes or not all(isinstance(n, int) and n >= 0 for n in sizes.values()):
            raise ValueError("bytes_by_type is not a table of byte counts")
        numbers = (rec.tg_tps, rec.pp_tps, rec.threads, rec.n_layer, rec.kv_read_bytes)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
            raise ValueError("a speed, count or size is not a number")
        if not (rec.tg_tps > 0 and rec.threads > 0 and rec.n_layer > 0 and sum(sizes.values()) > 0):
            raise ValueError("record has a non-positive speed, size or count")
        return rec


def device_id(cpu_model: str, arch: str) -> str:
    """A file-name-safe id of this kind of device: its CPU model and architecture."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{arch} {cpu_model}".lower()).strip("-")
    return slug[:120] or "unknown-device"


def this_device() -> tuple[str, dict]:
    from profiles.cpu import read_cpu

    cpu = read_cpu()
    return device_id(cpu.cpu_model, cpu.arch), {"cpu": cpu.cpu_model, "arch": cpu.arch}


def calibration_path(home: Path | None = None, device: str | None = None) -> Path:
    device = device or this_device()[0]
    return (home or edge_home()) / "calibration" / f"{device}.json"


def model_key(shape) -> str:
    """Names one model across its quantizations: architecture and dimensions, not the file."""
    return (
        f"{shape.arch}-l{shape.n_layer}-e{shape.n_embd}-h{shape.n_head}x{shape.n_head_kv}"
        f"-ff{shape.n_ff}-v{shape.n_vocab}"
    )


def load(path: Path | None = None) -> list[Record]:
    """The records of this device's calibration file; [] when there is none. A damaged file, or a
    damaged record in it, is skipped with a warning naming the file."""
    path = path or calibration_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("calibration %s ignored: %s", path, exc.strerror or exc)
        return []
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"not an {FORMAT} file of version {VERSION}")
        raw = data["records"]
        if not isinstance(raw, list):
            raise ValueError("records is not a list")
    except (ValueError, KeyError) as exc:
        log.warning("calibration %s ignored (%s); run `edge bench` again to measure this device", path, exc)
        return []
    records = []
    for i, d in enumerate(raw):
        try:
            records.append(Record.from_dict(d))
        except (TypeError, ValueError) as exc:
            log.warning("calibration %s: record %d ignored (%s)", path, i, exc)
    return records


def save(record: Record, path: Path | None = None, device: dict | None = None) -> Path:
    """Add `record`, replacing an earlier one of the same model, type, profile and settings."""
    if path is None:
        dev_id, device = this_device()
        path = calibration_path(device=dev_id)
    if not record.measured_at:
        record = Record(**{**asdict(record), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    same = ("model", "profile", "type", "threads", "parallel")
    kept = [r for r in load(path) if any(getattr(r, k) != getattr(record, k) for k in same)]
    body = {
        "format": FORMAT,
        "version": VERSION,
        "device": device or {},
        "records": [asdict(r) for r in [*kept, record]],
    }
    return write_atomic(path, json.dumps(body, indent=2) + "\n")


def for_profile(records: list[Record], profile: str) -> list[Record]:
    """The records measured with `profile`'s settings, the newest of each (model, type) last."""
    return [r for r in records if r.profile == profile and r.parallel == 1]
