"""Exported ONNX folders in the wider ecosystem: onnxruntime-genai opens ours unchanged, and
architectures our graph builder lacks go through optimum's exporter and are served by `edge serve`.

onnxruntime-genai is a test extra (`edge-llm[dev]`); where it is not installed the genai test skips
and says so, except under CI (the CI variable set), where it must be installed and the test fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from quantize.onnx.export import export_onnx
from tests.support.live import greedy_ids

N_GREEDY = 24
ROOT = Path(__file__).resolve().parents[2]
PROMPT_IDS = [5, 17, 300, 42, 99, 7, 250, 600, 12, 33, 7, 81]


def _genai():
    try:
        import onnxruntime_genai
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("onnxruntime-genai is a test extra and must be installed in CI: pip install -e '.[dev]'")
        pytest.skip("onnxruntime-genai is not installed here (pip install -e '.[dev]' installs it)")
    return onnxruntime_genai


def _genai_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    og = _genai()
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + n, min_length=len(prompt) + n)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    out: list[int] = []
    while not gen.is_done() and len(out) < n:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def _logits(folder: Path, ids: list[int]) -> np.ndarray:
    """(n, vocab) logits of every position, through the backend's batcher."""
    from edge.engine.onnx.backend import batcher_class

    b = batcher_class(folder)(folder, n_ctx=64, n_parallel=1, n_threads=1)
    try:
        return b.logits_all(0, ids, 0)
    finally:
        b.free()


def _hf_greedy(src: Path, prompt: list[int], n: int) -> list[int]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "otype"), [("llama3", "fp32"), ("llama3", "int4"), ("phi3", "fp32"), ("gemma3", "int8")]
)
def test_onnxruntime_genai_runs_our_folder_greedy_as_we_do(tiny_checkpoint, tmp_path, kind, otype):
    _genai()
    [r] = export_onnx(tiny_checkpoint(kind), [f"onnx:{otype}"], tmp_path, quiet=True, name=kind)
    config = json.loads((r.path / "genai_config.json").read_text())
    assert config["model"]["decoder"]["inputs"]["attention_mask"] == "attention_mask"
    assert config["search"]["past_present_share_buffer"] is True
    manifest = json.loads((r.path / "edge_onnx.json").read_text())
    assert "genai_config.json" in manifest["files"]  # part of the folder: checked like the rest
    ours = greedy_ids(r.path, PROMPT_IDS, N_GREEDY)
    assert len(ours) == N_GREEDY
    assert _genai_greedy(r.path, PROMPT_IDS, N_GREEDY) == ours


@pytest.fixture(scope="module")
def qwen2_folders(tiny_checkpoint, tmp_path_factory):
    """A tiny random Qwen2 (no converter of ours) converted by the CLI to onnx:fp32 and onnx:int8: (src, out, stdout)."""
    import subprocess
    import sys

    src = tiny_checkpoint("qwen2")
    out = tmp_path_factory.mktemp("qwen2-onnx")
    cli = "import sys; from quantize.cli import main; main(sys.argv[1:])"
    args = ["convert", str(src), "--to", "onnx:fp32,onnx:int8,onnx:int4", "-o", str(out), "--name", "q", "--no-eval"]
    env = {**os.environ, "COLUMNS": "300", "PYTHONPATH": str(ROOT)}  # the summary table on one line per folder
    done = subprocess.run([sys.executable, "-c", cli, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return src, out, done.stdout + done.stderr


@pytest.mark.slow
def test_optimum_exports_what_our_builder_lacks_and_says_so(qwen2_folders):
    src, out, summary = qwen2_folders
    assert summary.count("optimum") >= 3, summary  # one summary row per folder names its exporter
    for t in ("fp32", "int8", "int4_bs32"):
        manifest = json.loads((out / f"q-onnx-{t}" / "edge_onnx.json").read_text())
        assert manifest["model"]["exporter"] == "optimum" and manifest["model"]["kv_cache"] == "concat"
        assert {"tokenizer.json", "tokenizer_config.json", "genai_config.json"} <= set(manifest["files"])
    import onnx

    graph = onnx.load(str(out / "q-onnx-int8" / "model.onnx")).graph
    weights = {t.name for t in graph.initializer}
    assert any(n.op_type == "MatMulNBits" for n in graph.node)
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]  # all quantized
    hf = _hf_greedy(src, PROMPT_IDS, N_GREEDY)
    assert greedy_ids(out / "q-onnx-fp32", PROMPT_IDS, N_GREEDY) == hf
    ref, int8 = (_logits(out / f"q-onnx-{t}", PROMPT_IDS) for t in ("fp32", "int8"))  # (n, vocab) each
    assert np.corrcoef(ref.ravel(), int8.ravel())[0, 1] > 0.99
    assert (ref.argmax(-1) == int8.argmax(-1)).mean() >= 0.75
    assert len(greedy_ids(out / "q-onnx-int4_bs32", PROMPT_IDS, 4)) == 4
    int4 = onnx.load(str(out / "q-onnx-int4_bs32" / "model.onnx")).graph
    bits = {
        n.output[0]: next(a.i for a in n.attribute if a.name == "bits") for n in int4.node if n.op_type == "MatMulNBits"
    }
    assert bits.pop("logits") == 8 and set(bits.values()) == {4}  # the output projection kept at 8 bits, as ours


@pytest.mark.slow
def test_edge_serve_answers_from_an_optimum_folder_as_transformers_does(qwen2_folders, tmp_path):
    import openai
    from tokenizers import Tokenizer

    from edge.engine import open_engine
    from tests.support.live import start_server

    src, out, _ = qwen2_folders
    folder = out / "q-onnx-fp32"
    text = "the quick brown fox jumps over"
    engine = open_engine(folder, name="t", n_ctx=256, n_threads=1)
    try:
        prompt = engine.tokenize(text)  # what the server's text prompt tokenizes to
    finally:
        engine.close()
    eos = set(json.loads((folder / "edge_onnx.json").read_text())["model"]["eos_token_ids"])
    hf = _hf_greedy(src, prompt, 16)
    cut = next((i for i, t in enumerate(hf) if t in eos), len(hf))  # the server stops at end of sequence
    want = Tokenizer.from_file(str(folder / "tokenizer.json")).decode(hf[:cut])
    assert want.strip(), hf

    server = start_server(tmp_path / "home", str(folder), "--ctx", "256")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        got = client.completions.create(model=folder.name, prompt=text, temperature=0, max_tokens=16)
    finally:
        server.stop()
    assert got.choices[0].text == want
    assert got.usage.completion_tokens == cut


def test_optimum_path_refuses_types_it_cannot_write(tiny_checkpoint, tmp_path):
    from edge.errors import UnknownTypeError

    with pytest.raises(UnknownTypeError, match="onnx:fp16 is not available.*qwen2.*optimum"):
        export_onnx(tiny_checkpoint("qwen2"), ["onnx:fp16"], tmp_path, quiet=True)
    assert not any(tmp_path.iterdir())


def test_missing_optimum_names_the_extra(tiny_checkpoint, tmp_path, monkeypatch):
    import builtins

    from edge.errors import DependencyMissingError

    real = builtins.__import__

    def no_optimum(name, *args, **kw):
        if name == "optimum" or name.startswith("optimum."):
            raise ImportError(name=name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_optimum)
    with pytest.raises(DependencyMissingError, match=r"edge-llm\[optimum\]"):
        export_onnx(tiny_checkpoint("qwen2"), ["onnx:fp32"], tmp_path, quiet=True)
    assert not any(tmp_path.iterdir())


def test_our_graph_takes_the_attention_mask_as_onnxruntime_genai_feeds_it(tiny_checkpoint, tmp_path):
    """Our engine binds a mask of ones; the graph's lengths come from it (chunked == one pass)."""
    from edge.engine.onnx.backend import OnnxBatcher

    [r] = export_onnx(tiny_checkpoint("llama3"), ["onnx:fp32"], tmp_path, quiet=True, name="m")
    b = OnnxBatcher(r.path, n_ctx=64, n_parallel=1, n_threads=1)
    whole = b.logits_all(0, PROMPT_IDS, 0)
    parts = np.concatenate([b.logits_all(0, PROMPT_IDS[:5], 0), b.logits_all(0, PROMPT_IDS[5:], 5)])
    np.testing.assert_allclose(parts, whole, atol=1e-4)


@pytest.mark.slow
def test_a_bert_encoder_goes_through_optimum_and_is_not_served_as_a_decoder(tiny_checkpoint, tmp_path):
    import onnxruntime as ort
    import torch
    import transformers

    from edge.engine import open_engine
    from edge.errors import ModelFormatError

    src = tiny_checkpoint("bert")
    [r] = export_onnx(src, ["onnx:fp32"], tmp_path, quiet=True, name="b")
    model = json.loads((r.path / "edge_onnx.json").read_text())["model"]
    assert r.exporter == "optimum" and model["task"] == "feature-extraction"
    ids = np.array([PROMPT_IDS[:8]], dtype=np.int64)  # (1, 8)
    sess = ort.InferenceSession(str(r.path / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]  # (1, 8, hidden)
    with torch.no_grad():
        want = transformers.AutoModel.from_pretrained(src).eval()(torch.from_numpy(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(ModelFormatError, match="feature-extraction.*GGUF"):
        open_engine(r.path, name="b", n_ctx=64, n_threads=1)
