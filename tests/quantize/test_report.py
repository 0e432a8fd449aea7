"""The model card: `edge-quantize convert` with several types (and `eval`) writes Markdown + JSON that
validate against quantize/eval/report.schema.json and whose sha256 values match the files."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from quantize.eval.report import SCHEMA_PATH

CLI = [sys.executable, "-m", "quantize.cli"]


def _short_text(tmp: Path) -> Path:
    """The first ~2.6 chunks of the default text: enough for two 512-token chunks, quick to evaluate."""
    from quantize.eval.text import default_eval_text

    path = tmp / "eval.txt"
    path.write_bytes(default_eval_text().path.read_bytes()[:6000])
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def converted(smollm2_path, module_tmp) -> tuple[Path, dict, str]:
    """convert SmolLM2 -> f32,q8_0,q4_k_m with an importance matrix, --json: (folder, report, stdout)."""
    out = module_tmp("report")
    text = _short_text(out.parent)
    run = subprocess.run(
        [
            *CLI,
            "convert",
            str(smollm2_path),
            "--to",
            "f32,q8_0,q4_k_m",
            "-o",
            str(out),
            "--name",
            "smol",
            "--eval-text",
            str(text),
            "--imatrix-text",
            str(text),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out, json.loads(run.stdout), run.stderr


@pytest.mark.slow
def test_json_report_validates_and_its_sha256_match_the_files(converted):
    out, data, _ = converted
    _validator().validate(data)
    assert json.loads((out / "smol-report.json").read_text())["variants"] == data["variants"]
    files = {a["file"] for a in data["artifacts"]}
    assert files == {"smol-f32.gguf", "smol-q8_0.gguf", "smol-q4_k_m.gguf"}
    for a in data["artifacts"]:
        assert _sha(out / a["file"]) == a["sha256"] and (out / a["file"]).stat().st_size == a["size_bytes"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files | {"smol-report.json", "smol-report.md"})


@pytest.mark.slow
def test_report_content_reference_source_and_imatrix_figures(converted):
    out, data, _ = converted
    assert data["reference"]["type"] == "F32" and data["reference"]["kld_mean"] is None
    assert data["source"] == {"path": data["source"]["path"], "type": "Q4_1", "already_quantized": True}
    assert any("already quantized (Q4_1)" in n for n in data["notes"])
    assert data["evaluation"]["ctx"] == 512 and data["evaluation"]["chunks"] == 2
    assert data["evaluation"]["text"]["origin"] == "--eval-text"
    by_type = {v["type"]: v for v in data["variants"]}
    assert set(by_type) == {"Q8_0", "Q4_K_M"}
    for v in by_type.values():
        assert v["imatrix"] is True and v["without_imatrix"] is not None
        assert 0 < v["kld_mean"] < 1 and 0 < v["same_top_pct"] <= 100
        assert v["bits_per_weight"] < data["reference"]["bits_per_weight"]
        assert "rpi5-8gb" in v["fits"]
    q4 = by_type["Q4_K_M"]
    assert q4["kld_mean"] != q4["without_imatrix"]["kld_mean"]  # the matrix changed the weights
    md = (out / "smol-report.md").read_text()
    assert "| gguf | Q4_K_M +imatrix |" in md and "(no imatrix " in md
    assert data["artifacts"][0]["sha256"] in md


@pytest.mark.slow
def test_k_quant_fallbacks_are_in_the_report_and_not_on_stderr(converted):
    """SmolLM2's 576-wide rows do not divide into Q4_K_M's 256-value blocks: the JSON and Markdown say
    how many tensors fell back and to what; the per-tensor warnings never reach the terminal."""
    out, data, stderr = converted
    assert "falling back" not in stderr and "not divisible" not in stderr and "fell back" not in stderr  # --json
    by_type = {v["type"]: v for v in data["variants"]}
    assert data["reference"]["fallbacks"] == [] and by_type["Q8_0"]["fallbacks"] == []
    q4 = by_type["Q4_K_M"]["fallbacks"]
    assert {(f["wanted"], f["used"], f["block"], tuple(f["row_sizes"])) for f in q4} == {
        ("Q4_K", "Q5_0", 256, (576,)),
        ("Q6_K", "Q8_0", 256, (576,)),
    }
    assert sum(f["tensors"] for f in q4) == 180  # llama.cpp's own "180 of 272 tensor(s)" line
    md = (out / "smol-report.md").read_text()
    for f in q4:
        assert f"- Q4_K_M: {f['summary']}" in md and f["summary"].startswith(f"{f['tensors']} tensors fell back to")


def test_schema_rejects_a_report_with_a_bad_sha256_or_a_missing_figure():
    validator = _validator()
    row = {
        "format": "gguf",
        "type": "Q4_K_M",
        "file": "m.gguf",
        "kept": True,
        "sha256": "0" * 64,
        "size_bytes": 10,
        "bits_per_weight": 4.9,
        "imatrix": False,
        "kld_mean": 0.03,
        "kld_p99": 0.2,
        "ppl": 10.0,
        "ppl_delta_pct": 1.0,
        "same_top_pct": 90.0,
        "prompt_tps": 100.0,
        "gen_tps": 10.0,
        "fits": [],
        "without_imatrix": None,
    }
    good = {
        "schema": "edge-llm/quant-report/1",
        "created": "2026-01-01T00:00:00Z",
        "name": "m",
        "source": {"path": "x", "type": None, "already_quantized": False},
        "machine": {"system": "Linux", "machine": "x86_64", "processor": "x86_64", "threads": 2, "load_avg_1min": 0.5},
        "tools": {"edge-llm": "0.1.0"},
        "evaluation": {
            "text": {"path": "t", "origin": "--eval-text", "sha256": "a" * 64, "size_bytes": 5},
            "default_text_chain": "...",
            "ctx": 512,
            "chunks": 2,
            "tokens_scored": 510,
            "method": "m",
        },
        "reference": dict(row, type="F32"),
        "variants": [row],
        "artifacts": [{"file": "m.gguf", "sha256": "0" * 64, "size_bytes": 10}],
        "notes": [],
    }
    validator.validate(good)
    bad_sha = copy.deepcopy(good)
    bad_sha["artifacts"][0]["sha256"] = "XYZ"
    missing = copy.deepcopy(good)
    del missing["variants"][0]["kld_mean"]
    wrong_format = copy.deepcopy(good)
    wrong_format["variants"][0]["format"] = "safetensors"
    for broken in (bad_sha, missing, wrong_format):
        assert not validator.is_valid(broken)


def test_dry_run_prints_the_plan_and_writes_nothing(smollm2_path, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [*CLI, "convert", str(smollm2_path), "--to", "f16,q4_k_m", "-o", str(out), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    assert [p["type"] for p in plan] == ["F16", "Q4_K_M"]
    assert plan[0]["predicted_bytes"] > plan[1]["predicted_bytes"] > 50e6
    assert not out.exists()


@pytest.mark.slow
def test_eval_command_reports_existing_files(converted, tmp_path):
    out, data, _ = converted
    text = _short_text(tmp_path)
    run = subprocess.run(
        [
            *CLI,
            "eval",
            str(out / "smol-f32.gguf"),
            str(out / "smol-q8_0.gguf"),
            "-o",
            str(tmp_path),
            "--name",
            "again",
            "--eval-text",
            str(text),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    again = json.loads(run.stdout)
    _validator().validate(again)
    q8 = next(v for v in data["variants"] if v["type"] == "Q8_0")
    assert again["variants"][0]["kld_mean"] == q8["kld_mean"]  # reproducible run to run
    assert (tmp_path / "again-report.md").is_file()
