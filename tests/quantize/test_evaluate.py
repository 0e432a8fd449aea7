"""Quality figures: the math, the default text, and agreement with llama-perplexity --kl-divergence.

The real-model tests use SmolLM2-135M (bundled Q4_1) dequantized to F32 as the reference, on the
first chunks of the default evaluation text, chunks of 512 tokens as in llama.cpp's tables.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from quantize.convert import convert
from quantize.eval import ladder, metrics
from quantize.eval import text as evtext

ROOT = Path(__file__).resolve().parents[2]
N_CHUNKS = 3


# -- pure functions ---------------------------------------------------------------------------------


def test_encode_decode_round_trip_within_half_a_code():
    rng = np.random.default_rng(0)
    logp = metrics.log_softmax(rng.normal(0, 4, (5, 300)).astype(np.float32))  # (5, 300)
    header, codes = metrics.encode_rows(logp)
    back = metrics.decode_rows(header, codes)
    keep = logp > logp.max(axis=1, keepdims=True) + metrics.MIN_LOG_PROB
    step = header[:, :1]
    assert np.all(np.abs(back - logp)[keep] <= (step / 2 + 1e-6).repeat(300, 1)[keep])
    assert np.all(back[~keep] <= logp.max(axis=1, keepdims=True).repeat(300, 1)[~keep] + metrics.MIN_LOG_PROB + 1e-4)


def test_kl_is_zero_for_identical_and_positive_for_different_distributions():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4, 1000)).astype(np.float32)
    logp = metrics.log_softmax(logits)
    header, codes = metrics.encode_rows(logp)
    same = metrics.kl_rows(header, codes, logp)
    assert np.all(np.abs(same) < 1e-4)
    other = metrics.log_softmax(logits + rng.normal(0, 1, logits.shape).astype(np.float32))
    exact = (np.exp(logp) * (logp - other)).sum(axis=1)
    assert np.allclose(metrics.kl_rows(header, codes, other), exact, rtol=1e-2)
    assert np.all(exact > 0.1)


def test_chunks_drop_the_tail_and_start_with_bos():
    tokens = np.arange(10, 35, dtype=np.int32)  # 25 tokens
    out = list(evtext.chunks(tokens, 8, bos=1))
    assert len(out) == 3 and all(c[0] == 1 for c in out)
    assert out[1][1:].tolist() == list(range(19, 26))
    assert [c[0] for c in evtext.chunks(tokens, 8, bos=None)] == [10, 18, 26]


def test_bad_context_is_refused():
    from edge.errors import BadRequestError

    with pytest.raises(BadRequestError, match="--eval-ctx"):
        ladder.EvalConfig(ctx=15)


def test_default_text_is_debian_gpl3_or_a_shipped_licence(monkeypatch, tmp_path):
    text = evtext.default_eval_text()
    if evtext.DEBIAN_GPL3.is_file():
        assert text.path == evtext.DEBIAN_GPL3 and "GPL-3" in text.origin
    monkeypatch.setattr(evtext, "DEBIAN_GPL3", tmp_path / "absent")
    fallback = evtext.default_eval_text()
    assert fallback.origin.startswith("package ") and fallback.size_bytes > 1000
    assert fallback.path.is_file()


def test_pick_reference_prefers_f32_then_f16_then_the_fallback(tmp_path):
    arts = [ladder.Artifact(tmp_path / f"m-{t}.gguf", t) for t in ("Q4_K_M", "F16", "F32")]
    assert ladder.pick_reference(arts, None).type == "F32"
    assert ladder.pick_reference(arts[:2], None).type == "F16"
    fb = ladder.Artifact(tmp_path / "src.gguf", "Q4_1")
    assert ladder.pick_reference(arts[:1], fb) is fb


# -- real model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_ladder(smollm2_path, module_tmp) -> dict[str, Path]:
    """SmolLM2 dequantized to F32, plus Q8_0 and Q3_K_M made from it by edge-quantize."""
    out = module_tmp("smol-ladder")
    results = convert(smollm2_path, "f32,q8_0,q3_k_m", out, quiet=True, name="smol")
    return {r.type: Path(r.path) for r in results}


def _evaluate(ref: Path, variant: Path, config: ladder.EvalConfig) -> dict:
    with ladder.Evaluation(ref, evtext.default_eval_text(), config) as e:
        e.run_reference()
        return e.run_variant(variant).figures


@pytest.mark.slow
def test_f32_against_itself_is_kl_zero_and_all_tops_agree_reproducibly(smol_ladder):
    config = ladder.EvalConfig(max_chunks=2, speed=False)
    first = _evaluate(smol_ladder["F32"], smol_ladder["F32"], config)
    assert abs(first["kld_mean"]) < 1e-5 and first["kld_p99"] < 1e-4  # 16-bit codes of the spilled reference
    assert first["same_top_pct"] == 100.0
    assert first["ppl"] == first["ppl_ref"] and first["ppl_delta_pct"] == 0.0
    assert first["tokens"] == 2 * 255
    again = _evaluate(smol_ladder["F32"], smol_ladder["F32"], config)
    assert again == first


def _llama_perplexity_kld(tool: Path, ref: Path, variant: Path, text: Path, work: Path) -> dict:
    base = work / "base.kld"
    common_args = ["-c", "512", "-b", "512", "--chunks", str(N_CHUNKS), "-t", "2"]
    subprocess.run(
        [tool, "-m", ref, "-f", text, *common_args, "--kl-divergence-base", base], check=True, capture_output=True
    )
    out = subprocess.run(
        [tool, "-m", variant, *common_args, "--kl-divergence-base", base, "--kl-divergence"],
        check=True,
        capture_output=True,
        text=True,
    )
    log = out.stdout + out.stderr

    def grab(pattern: str) -> float:
        m = re.search(pattern, log)
        assert m, f"{pattern!r} not in llama-perplexity's output:\n{log[-2000:]}"
        return float(m.group(1))

    return {
        "kld_mean": grab(r"Mean\s+KLD:\s+([0-9.eE+-]+)"),
        "ppl": grab(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)"),
        "ppl_ref": grab(r"Mean PPL\(base\)\s+:\s+([0-9.]+)"),
        "same_top_pct": grab(r"Same top p:\s+([0-9.]+)"),
        "kld_p99": grab(r"99\.0%\s+KLD:\s+([0-9.]+)"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["Q8_0", "Q3_K_M"])
def test_figures_agree_with_llama_perplexity_within_2_percent(smol_ladder, qtype, tmp_path, anchor_tool):
    text = evtext.default_eval_text()
    theirs = _llama_perplexity_kld(
        anchor_tool("llama-perplexity"), smol_ladder["F32"], smol_ladder[qtype], text.path, tmp_path
    )
    ours = _evaluate(smol_ladder["F32"], smol_ladder[qtype], ladder.EvalConfig(max_chunks=N_CHUNKS, speed=False))
    assert ours["tokens"] == N_CHUNKS * 255
    for key in ("kld_mean", "ppl", "ppl_ref", "same_top_pct", "kld_p99"):
        assert ours[key] == pytest.approx(theirs[key], rel=0.02), (key, ours[key], theirs[key])
    assert ours["kld_mean"] > 1e-3  # a real difference was measured, not two copies of the reference


@pytest.mark.slow
def test_vocabulary_mismatch_is_refused(smol_ladder, gemma3_path):
    from edge.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="not the same model"):
        _evaluate(smol_ladder["F32"], gemma3_path, ladder.EvalConfig(max_chunks=2, speed=False))


def test_short_text_is_refused_with_a_way_out(smol_ladder, tmp_path):
    from edge.errors import BadRequestError

    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    with pytest.raises(BadRequestError, match="--eval-text"):
        with ladder.Evaluation(smol_ladder["F32"], evtext.EvalText.from_file(short, "--eval-text")) as e:
            e.run_reference()
