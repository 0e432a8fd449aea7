"""GGUF and ONNX variants of one model in one report, against one reference.

The tiny Llama-3 checkpoint goes to F32 GGUF (the reference), Q8_0, ONNX fp32 and ONNX int4 in one
`edge-quantize convert`. The ONNX fp32 folder holds the same float32 weights as the F32 GGUF, so two
different runtimes must agree on every next-token distribution: that is what makes the row mean
something. `edge-quantize eval` takes ONNX folders as variants too.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from quantize.eval.report import SCHEMA_PATH

CLI = [sys.executable, "-m", "quantize.cli"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ladder(tiny_checkpoint, module_tmp) -> tuple[Path, dict]:
    out = module_tmp("ladder-onnx")
    text = out / "eval.txt"
    from quantize.eval.text import default_eval_text

    text.write_bytes(default_eval_text().path.read_bytes()[:4000])
    run = subprocess.run(
        [
            *CLI,
            "convert",
            str(tiny_checkpoint("llama3")),
            "--to",
            "f32,q8_0,onnx:fp32,onnx:int4",
            "-o",
            str(out),
            "--name",
            "tiny",
            "--eval-text",
            str(text),
            "--eval-ctx",
            "128",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out, json.loads(run.stdout)


def test_onnx_rows_share_the_table_and_the_reference(ladder):
    out, data = ladder
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(data)
    assert data["reference"]["type"] == "F32" and data["reference"]["format"] == "gguf"
    rows = {(v["format"], v["type"]): v for v in data["variants"]}
    assert set(rows) == {("gguf", "Q8_0"), ("onnx", "onnx:fp32"), ("onnx", "onnx:int4_bs32")}
    fp32 = rows[("onnx", "onnx:fp32")]
    # same weights, another runtime: distributions agree to float rounding
    assert fp32["kld_mean"] < 1e-4 and fp32["same_top_pct"] > 99.0, fp32
    assert abs(fp32["ppl_delta_pct"]) < 0.1
    int4 = rows[("onnx", "onnx:int4_bs32")]
    assert (
        int4["kld_mean"] > 10 * fp32["kld_mean"] and int4["size_bytes"] < fp32["size_bytes"] / 2
    )  # a tiny model: the fp16 embedding weighs a lot
    for v in (fp32, int4):
        folder = out / v["file"]
        assert folder.is_dir() and v["sha256"] == hashlib.sha256((folder / "edge_onnx.json").read_bytes()).hexdigest()
        assert v["gen_tps"] > 0 and v["prompt_tps"] > 0


def test_eval_takes_onnx_folders(ladder):
    out, _ = ladder
    run = subprocess.run(
        [
            *CLI,
            "eval",
            str(out / "tiny-f32.gguf"),
            str(out / "tiny-onnx-fp32"),
            "--eval-text",
            str(out / "eval.txt"),
            "--eval-ctx",
            "128",
            "--json",
            "-o",
            str(out / "again"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [row] = json.loads(run.stdout)["variants"]
    assert row["format"] == "onnx" and row["type"] == "onnx:fp32" and row["kld_mean"] < 1e-4
