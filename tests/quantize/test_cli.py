"""The edge-quantize command as a user runs it: exit codes, one-line errors, the summary table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quantize.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
def test_convert_and_unpack_end_to_end(tiny_checkpoint, tmp_path):
    r = run(
        "convert", str(tiny_checkpoint("llama3")), "--to", "f16,q4_0", "-o", str(tmp_path / "out"), "--name", "tiny"
    )
    assert r.returncode == 0, r.stderr
    assert "tiny-f16.gguf" in r.stderr and "tiny-q4_0.gguf" in r.stderr and "bits/weight" in r.stderr
    # two types: the GGUF files plus the quality report (model card) beside them, nothing else
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "tiny-f16.gguf",
        "tiny-q4_0.gguf",
        "tiny-report.json",
        "tiny-report.md",
    ]

    again = run(
        "convert", str(tiny_checkpoint("llama3")), "--to", "q4_0", "-o", str(tmp_path / "out"), "--name", "tiny"
    )
    assert again.returncode == 6 and "already exists" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr

    quiet = run(
        "convert",
        str(tiny_checkpoint("llama3")),
        "--to",
        "q4_0",
        "-o",
        str(tmp_path / "out"),
        "--name",
        "tiny",
        "--force",
        "--quiet",
    )
    assert quiet.returncode == 0 and "bits/weight" not in quiet.stderr + quiet.stdout

    u = run("unpack", str(tmp_path / "out" / "tiny-f16.gguf"), "-o", str(tmp_path / "hf"))
    assert u.returncode == 0, u.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["convert", "{ckpt}", "--to", "q9_k", "-o", "{out}"], 2, "unknown quantization type 'q9_k'"),
        (["convert", "{ckpt}", "--to", "iq2_xxs", "-o", "{out}"], 2, "needs an importance matrix"),
        (["convert", "{missing}", "--to", "f16", "-o", "{out}"], 3, "does not exist"),
        (["unpack", "{missing}", "-o", "{out}"], 3, "does not exist"),
        (["convert", "{ckpt}", "-o", "{out}"], 2, "--to"),  # usage error
    ],
)
def test_errors_map_to_exit_codes(tiny_checkpoint, tmp_path, args, code, text):
    subst = {"ckpt": str(tiny_checkpoint("llama3")), "out": str(tmp_path / "out"), "missing": str(tmp_path / "x")}
    r = run(*[a.format(**subst) for a in args])
    assert r.returncode == code, r.stderr
    assert text in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_help_exits_zero():
    r = run("--help")
    assert r.returncode == 0 and "convert" in r.stdout and "unpack" in r.stdout


def test_dry_run_lists_onnx_folders_and_writes_nothing(tiny_checkpoint, tmp_path):
    import json

    out = tmp_path / "out"
    r = run(
        "convert", str(tiny_checkpoint("llama3")), "--to", "q8_0,onnx:int4", "-o", str(out), "--name", "t", "--dry-run"
    )
    assert r.returncode == 0, r.stderr
    as_json = run(
        *("convert", str(tiny_checkpoint("llama3")), "--to", "q8_0,onnx:int4", "-o", str(out)),
        *("--name", "t", "--dry-run", "--json"),
    )
    plan = {p["type"]: p for p in json.loads(as_json.stdout)}
    assert plan["onnx:int4_bs32"]["kind"] == "onnx" and plan["onnx:int4_bs32"]["path"] == str(out / "t-onnx-int4_bs32")
    assert plan["onnx:int4_bs32"]["predicted_bytes"] is None
    assert plan["Q8_0"]["kind"] == "gguf" and plan["Q8_0"]["predicted_bytes"] > 0
    assert "t-onnx-int4_bs32" in r.stderr + r.stdout
    assert not out.exists()
