"""ONNX export (quantize/onnx) checked against transformers, through our own backend.

Tolerance (measured on these fixtures: max |ours - transformers| <= 3e-5 where the logits' std is
~2.3, i.e. ~1.3e-5 std): fp32 logits must agree within 2e-4 std at every position, with the prompt
evaluated in chunks (10 tokens, 6 more on top of the cache, then one at a time) so that the KV cache
written in place by GroupQueryAttention is part of what is compared. Greedy output: 32 tokens
identical to transformers' generate(). Quantized types: top-1 agreement and KL with fp32 printed
(run with -s), and bounded so that a broken quantizer fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelFormatError, OutputExistsError, UnknownTypeError, UnsupportedArchitectureError
from quantize.onnx.export import export_onnx
from quantize.onnx.quant import parse_onnx_type
from tests.support.live import greedy_ids

KINDS = ["llama3", "llama3-tied", "llama2", "phi3", "gemma", "gemma2", "gemma3"]
REL_TOL = 2e-4  # of the reference logits' std
N_GREEDY = 32


def _hf_model(folder: Path):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def _hf_logits(model, ids: list[int], vocab: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, :, :vocab].float().numpy()  # (n, vocab)


def _batcher(folder: Path, n_ctx: int = 256):
    from edge.engine.onnx.backend import OnnxBatcher

    return OnnxBatcher(folder, n_ctx=n_ctx, n_parallel=1, n_threads=1)


def _chunked_logits(b, ids: list[int]) -> np.ndarray:
    """Logits of every position: prompt chunks 10 + 6 on the cache, then single tokens."""
    parts = [b.logits_all(0, ids[:10], 0), b.logits_all(0, ids[10:16], 10)]
    parts += [b.logits_all(0, [t], i) for i, t in enumerate(ids[16:], start=16)]
    return np.concatenate(parts)


def _ids(vocab: int, n: int = 24, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(3, min(vocab, 1000), size=n)]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, module_tmp):
    out = module_tmp("onnx")
    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, otype: str = "onnx:fp32") -> Path:
        if (kind, otype) not in cache:
            [r] = export_onnx(tiny_checkpoint(kind), [otype], out, quiet=True, name=kind)
            cache[(kind, otype)] = r.path
        return cache[(kind, otype)]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_logits_and_greedy_match_transformers(kind, tiny_checkpoint, exported):
    folder = exported(kind)
    vocab = json.loads((folder / "edge_onnx.json").read_text())["model"]["vocab_size"]
    model = _hf_model(tiny_checkpoint(kind))
    ids = _ids(vocab)
    ref = _hf_logits(model, ids, vocab)
    got = _chunked_logits(_batcher(folder), ids)
    err = float(np.abs(got - ref).max())
    print(f"{kind}: max |onnx - transformers| = {err:.2e}, logits std {ref.std():.2f}")
    assert err <= REL_TOL * ref.std(), f"{kind}: logits differ by {err} (std {ref.std()})"

    import torch

    prompt = ids[:8]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY, do_sample=False, pad_token_id=0
        )
    want = out[0, len(prompt) :].tolist()
    assert greedy_ids(folder, prompt, N_GREEDY) == want


def _agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(got.astype(np.float64))
    return float((ref.argmax(-1) == got.argmax(-1)).mean()), float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.mark.parametrize(
    "otype", ["onnx:fp16", "onnx:int8", "onnx:int8_dyn", "onnx:int4", "onnx:int4_bs128_asym_acc1_head4"]
)
def test_quantized_types_load_generate_and_agree(otype, exported):
    ref_folder = exported("llama3")
    folder = exported("llama3", otype)
    ids = _ids(2000)
    ref = _batcher(ref_folder).logits_all(0, ids, 0)
    got = _chunked_logits(_batcher(folder), ids)
    top1, kl = _agreement(ref, got)
    corr = float(np.corrcoef(ref.ravel(), got.ravel())[0, 1])
    print(f"{otype}: top-1 agreement with fp32 {top1:.3f}, KL {kl:.4f}, logit correlation {corr:.4f}")
    # random tiny weights have near-ties everywhere, so top-1 is only bounded for the near-lossless
    # types; the correlation of the logits catches a broken quantizer (wrong packing gives ~0)
    # measured here: int8 (weight-only) 0.999, int8_dyn 0.93, int4 0.85
    assert corr >= {"onnx:fp16": 0.9999, "onnx:int8": 0.995, "onnx:int8_dyn": 0.9}.get(otype, 0.7)
    if otype == "onnx:fp16":
        assert top1 == 1.0
    assert len(greedy_ids(folder, ids[:8], 8)) == 8


def test_manifest_lists_files_with_hashes(exported):
    from edge.formats.onnx import verify_folder
    from edge.fsio import sha256_file

    folder = exported("gemma3")
    doc = json.loads((folder / "edge_onnx.json").read_text())
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json"} <= set(doc["files"])
    assert doc["files"]["model.onnx"]["sha256"] == sha256_file(folder / "model.onnx")
    assert doc["model"]["vocab_size"] < 1024 + 64  # Gemma 3's out-of-vocabulary rows are gone
    verify_folder(folder)


def test_external_data_stays_inside_and_tampering_is_refused(tiny_checkpoint, tmp_path):
    import onnx

    [r] = export_onnx(tiny_checkpoint("llama3"), ["onnx:fp32"], tmp_path, quiet=True, name="ext", external_data_bytes=0)
    assert (r.path / "model.onnx.data").is_file()
    assert _batcher(r.path).logits_all(0, [5, 6, 7], 0).shape == (3, 2000 if False else _vocab(r.path))

    # a model whose external data points out of the folder: refused before onnxruntime opens it
    bad = tmp_path / "escape"
    shutil.copytree(r.path, bad)
    model = onnx.load(str(bad / "model.onnx"), load_external_data=False)
    t = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    next(e for e in t.external_data if e.key == "location").value = "../ext-onnx-fp32/model.onnx.data"
    onnx.save_model(model, str(bad / "model.onnx"))
    with pytest.raises(ModelFormatError, match="leaves the model folder"):
        _batcher(bad)

    # a truncated weights file: the manifest's sizes catch it
    cut = tmp_path / "cut"
    shutil.copytree(r.path, cut)
    data = cut / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelFormatError):
        _batcher(cut)


def _vocab(folder: Path) -> int:
    return json.loads((folder / "edge_onnx.json").read_text())["model"]["vocab_size"]


def test_corrupt_model_and_missing_manifest(exported, tmp_path):
    src = exported("llama3")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(src, corrupt)
    size = (corrupt / "model.onnx").stat().st_size
    (corrupt / "model.onnx").write_bytes(b"\x07garbage" * (size // 8) + b"\0" * (size % 8))
    with pytest.raises(ModelFormatError, match="not a readable ONNX model"):
        _batcher(corrupt)
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    (bare / "edge_onnx.json").unlink()
    with pytest.raises(ModelFormatError, match="edge_onnx.json"):
        _batcher(bare)


@pytest.mark.parametrize(
    ("text", "name", "fmt"),
    [
        # (bits, block, symmetric, accuracy level, head bits, method)
        ("onnx:int8", "int8", (8, 32, True, 4, 8, "rtn")),  # int8 compute: the fast 8-bit kernel
        ("onnx:int8_acc1", "int8_acc1", (8, 32, True, 1, 8, "rtn")),
        ("onnx:int8_bs64_asym", "int8_bs64_asym", (8, 64, False, 4, 8, "rtn")),
        ("onnx:int4", "int4_bs32", (4, 32, True, 4, 8, "search")),  # the head at 8 bits, as Q4_0 keeps it higher
        ("onnx:int4_head8", "int4_bs32", (4, 32, True, 4, 8, "search")),
        ("onnx:int4_search", "int4_bs32", (4, 32, True, 4, 8, "search")),
        ("onnx:int4_head4", "int4_bs32_head4", (4, 32, True, 4, 4, "search")),
        ("onnx:int4_bs128_asym_acc1", "int4_bs128_asym_acc1", (4, 128, False, 1, 8, "search")),
        ("onnx:int4_rtn", "int4_bs32_rtn", (4, 32, True, 4, 8, "rtn")),  # onnxruntime's round-to-nearest
        ("onnx:int4_asym_rtn", "int4_bs32_asym_rtn", (4, 32, False, 4, 8, "rtn")),
        ("onnx:int4_gptq", "int4_bs32_gptq", (4, 32, True, 4, 8, "gptq")),
    ],
)
def test_type_table(text, name, fmt):
    t = parse_onnx_type(text)
    w = t.weights
    assert (t.name, (w.bits, w.block_size, w.symmetric, w.accuracy_level, w.head_bits, w.method)) == (name, fmt)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("onnx:int8_awq", "unknown int8 option"),
        ("onnx:int8_head4", "unknown int8 option"),
        ("onnx:int4_acc5", "0..4"),
        ("onnx:int8_bs128", "int8 block size 128"),
    ],
)
def test_unknown_type_options_are_refused(text, words):
    with pytest.raises(UnknownTypeError, match=words):
        parse_onnx_type(text)


def test_bad_requests_are_clear(tiny_checkpoint, tmp_path):
    src = tmp_path / "nonesuch"  # neither our graph builder nor optimum's exporter knows it
    shutil.copytree(tiny_checkpoint("llama3"), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "nonesuch"}))
    with pytest.raises(UnsupportedArchitectureError, match="graph builder has llama, phi3, gemma.*optimum"):
        export_onnx(src, ["onnx:fp32"], tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(UnknownTypeError, match="block size 48"):
        export_onnx(tiny_checkpoint("llama3"), ["onnx:int4_bs48"], tmp_path / "out", quiet=True)
    export_onnx(tiny_checkpoint("llama3"), ["onnx:fp32"], tmp_path / "out", quiet=True, name="x")
    with pytest.raises(OutputExistsError):
        export_onnx(tiny_checkpoint("llama3"), ["onnx:fp32"], tmp_path / "out", quiet=True, name="x")


def test_cli_convert_writes_onnx_and_gguf(tiny_checkpoint, tmp_path):
    from quantize.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "convert",
                str(tiny_checkpoint("phi3")),
                "--to",
                "onnx:int4_bs16,q8_0",
                "-o",
                str(tmp_path),
                "--name",
                "p",
                "--quiet",
                "--no-eval",
            ]
        )
    assert exit_.value.code == 0
    assert (tmp_path / "p-onnx-int4_bs16" / "model.onnx").is_file()
    assert len(list(tmp_path.glob("p-*8_0.gguf"))) == 1


# -- the real model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_onnx(smollm2_path, module_tmp):
    """The bundled SmolLM2 GGUF unpacked to HF, exported to fp32 / int8 / int4 from the HF folder."""
    from quantize.unpack import unpack

    hf = module_tmp("smollm2") / "hf"
    unpack(smollm2_path, hf, quiet=True)
    out = module_tmp("smollm2-onnx")
    results = export_onnx(hf, ["onnx:fp32", "onnx:int8", "onnx:int4"], out, quiet=True, name="smollm2")
    return hf, {r.type: r.path for r in results}


TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers that "
    "changed physics: the photoelectric effect, Brownian motion, special relativity and mass-energy "
    "equivalence. Today, many"
)


@pytest.mark.slow
def test_smollm2_fp32_matches_transformers_and_quantized_agreement(smollm2_onnx):
    hf, folders = smollm2_onnx
    fp32 = _batcher(folders["onnx:fp32"])
    ids = fp32.vocab.tokenize(TEXT, True)
    model = _hf_model(hf)
    ref = _hf_logits(model, ids, fp32.n_vocab)
    got = _chunked_logits(fp32, ids)
    err = float(np.abs(got - ref).max())
    print(f"smollm2 fp32: max |onnx - transformers| = {err:.2e}, logits std {ref.std():.2f}")
    assert err <= 1e-3 * ref.std()  # 30 layers: a little more rounding than the 2-layer fixtures

    import torch

    prompt = ids[:12]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY, do_sample=False)
    assert greedy_ids(folders["onnx:fp32"], prompt, N_GREEDY) == out[0, len(prompt) :].tolist()

    for otype in ("onnx:int8", "onnx:int4_bs32"):
        top1, kl = _agreement(got, _batcher(folders[otype]).logits_all(0, ids, 0))
        print(f"smollm2 {otype}: top-1 agreement with fp32 {top1:.3f}, KL {kl:.4f}")
        assert top1 >= 0.4, f"{otype} agrees with fp32 on only {top1:.0%} of positions"
