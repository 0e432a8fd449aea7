"""`edge-quantize adapter`: PEFT LoRA -> GGUF adapter, against llama.cpp's convert_lora_to_gguf.py.

Tiny random adapters on the tiny checkpoints of Llama-3 (q/k permutation), Phi-3 (fused qkv and
gate_up) and Gemma-3; llama.cpp's converter on the same folders is the oracle (tensor for tensor).
Bad input is refused with a clear error and leaves no file behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import BadRequestError, ModelFormatError, NotFoundError
from edge.formats.validate import validate_gguf_adapter
from quantize.adapter import convert_adapter, merge_adapter
from tests.support.lora import LLAMA_LINEARS, PHI3_LINEARS, gguf_tensors, oracle_convert, random_adapter

TARGETS = {"llama3": LLAMA_LINEARS, "phi3": PHI3_LINEARS, "gemma3": LLAMA_LINEARS}


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint, tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = random_adapter(tiny_checkpoint(kind), tmp_path_factory.mktemp(f"peft-{kind}"), TARGETS[kind])
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", ["llama3", "phi3", "gemma3"])
def test_adapter_equals_llama_cpp_converter(kind, adapters, tiny_checkpoint, tiny_gguf, tmp_path):
    peft_dir, base = adapters(kind), tiny_checkpoint(kind)
    ref, ref_kv = gguf_tensors(oracle_convert(peft_dir, base, tmp_path / "ref.gguf"))
    for name, base_arg in (("hf", base), ("gguf", tiny_gguf(kind, "f32"))):
        out = convert_adapter(peft_dir, base_arg, tmp_path / f"{name}.gguf").path
        ours, kv = gguf_tensors(out)
        assert sorted(ours) == sorted(ref), name
        for t in ref:
            assert ours[t].shape == ref[t].shape, t
            np.testing.assert_array_equal(ours[t], ref[t], err_msg=f"{name}: {t}")
        for key in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
            assert kv[key] == ref_kv[key], key
        summary = validate_gguf_adapter(out, tiny_gguf(kind, "f32"))
        assert (summary.rank, summary.n_pairs) == (4, len(ref) // 2)


def test_lora_b_rows_of_q_and_k_are_permuted(adapters, tiny_checkpoint, tmp_path):
    """The permutation is what makes q/k differ from PEFT's layout (v is stored as it is)."""
    from quantize.checkpoint import Checkpoint, read_header

    peft_dir = adapters("llama3")
    ours, _ = gguf_tensors(convert_adapter(peft_dir, tiny_checkpoint("llama3"), tmp_path / "a.gguf").path)
    src = Checkpoint(read_header(peft_dir / "adapter_model.safetensors"))
    q = src.load("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
    v = src.load("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")
    assert not np.array_equal(ours["blk.0.attn_q.weight.lora_b"], q)
    np.testing.assert_array_equal(ours["blk.0.attn_v.weight.lora_b"], v)


def _copy(peft_dir: Path, dst: Path, **config) -> Path:
    shutil.copytree(peft_dir, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(config)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_rslora_scale_is_folded_into_lora_b(adapters, tiny_checkpoint, tmp_path):
    peft_dir = adapters("llama3")
    plain, _ = gguf_tensors(convert_adapter(peft_dir, tiny_checkpoint("llama3"), tmp_path / "a.gguf").path)
    rs = _copy(peft_dir, tmp_path / "rs", use_rslora=True)
    folded, _ = gguf_tensors(convert_adapter(rs, tiny_checkpoint("llama3"), tmp_path / "b.gguf").path)
    # PEFT: alpha / sqrt(r) = 4; llama.cpp: alpha / r = 2 -> lora_b twice as large
    np.testing.assert_allclose(folded["blk.1.ffn_up.weight.lora_b"], 2 * plain["blk.1.ffn_up.weight.lora_b"])


@pytest.mark.parametrize(
    ("edit", "error", "says"),
    [
        ({"r": "eight"}, BadRequestError, "r is 'eight'"),
        ({"lora_alpha": None}, BadRequestError, "lora_alpha"),
        ({"target_modules": ["q_proj", "c_attn"]}, ModelFormatError, "c_attn"),
        ({"use_dora": True}, ModelFormatError, "DoRA"),
        ({"r": 16}, ModelFormatError, "rank 4"),
    ],
)
def test_bad_adapter_config_is_refused_and_nothing_written(edit, error, says, adapters, tiny_checkpoint, tmp_path):
    bad = _copy(adapters("llama3"), tmp_path / "bad", **edit)
    with pytest.raises(error, match=says):
        convert_adapter(bad, tiny_checkpoint("llama3"), tmp_path / "out.gguf")
    assert list(tmp_path.glob("*.gguf")) == [] and not any(p.name.startswith(".edge-tmp") for p in tmp_path.iterdir())


def test_missing_config_and_another_base_are_refused(adapters, tiny_checkpoint, tmp_path):
    bad = _copy(adapters("llama3"), tmp_path / "bad")
    (bad / "adapter_config.json").unlink()
    with pytest.raises(NotFoundError, match="adapter_config.json"):
        convert_adapter(bad, tiny_checkpoint("llama3"), tmp_path / "out.gguf")
    with pytest.raises(ModelFormatError, match="another base model"):  # same layer names, other shapes
        convert_adapter(adapters("llama3"), tiny_checkpoint("gemma3"), tmp_path / "out.gguf")
    with pytest.raises(ModelFormatError, match="not layers of phi3"):
        convert_adapter(adapters("llama3"), tiny_checkpoint("phi3"), tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_trained_embeddings_and_tied_lm_head_are_refused_with_the_reason(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("llama3-tied")
    saved = random_adapter(base, tmp_path / "m2s", ["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(ModelFormatError, match="modules_to_save"):
        convert_adapter(saved, base, tmp_path / "a.gguf")
    embed = random_adapter(base, tmp_path / "emb", ["q_proj", "embed_tokens"])
    with pytest.raises(ModelFormatError, match="token embeddings"):
        convert_adapter(embed, base, tmp_path / "b.gguf")
    head = random_adapter(base, tmp_path / "head", ["q_proj", "lm_head"])
    with pytest.raises(ModelFormatError, match="ties its output"):
        convert_adapter(head, base, tmp_path / "c.gguf")
    assert list(tmp_path.glob("*.gguf")) == []


def test_lm_head_lora_on_an_untied_base_converts_like_llama_cpp(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("llama3")
    head = random_adapter(base, tmp_path / "head", ["v_proj", "lm_head"])
    ours, _ = gguf_tensors(convert_adapter(head, base, tmp_path / "a.gguf").path)
    ref, _ = gguf_tensors(oracle_convert(head, base, tmp_path / "ref.gguf"))
    assert "output.weight.lora_b" in ours and sorted(ours) == sorted(ref)
    for t in ref:
        np.testing.assert_array_equal(ours[t], ref[t])


def test_validator_refuses_malformed_adapters(adapters, tiny_checkpoint, tiny_gguf, tmp_path):
    good = convert_adapter(adapters("llama3"), tiny_checkpoint("llama3"), tmp_path / "a.gguf").path
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        validate_gguf_adapter(cut)
    with pytest.raises(ModelFormatError, match="not a LoRA adapter"):
        validate_gguf_adapter(tiny_gguf("llama3", "f32"))
    with pytest.raises(ModelFormatError, match="is for a 'llama' model"):
        validate_gguf_adapter(good, tiny_gguf("phi3", "f32"))
    with pytest.raises(ModelFormatError, match="another model"):
        validate_gguf_adapter(good, tiny_gguf("llama2", "f32"))  # MHA: k is larger


def test_cli_writes_the_adapter_and_exits_nonzero_on_bad_input(adapters, tiny_checkpoint, tmp_path, capsys):
    from quantize.cli import main

    out = tmp_path / "a.gguf"
    with pytest.raises(SystemExit) as done:
        main(["adapter", str(adapters("phi3")), "--base", str(tiny_checkpoint("phi3")), "-o", str(out), "-q"])
    assert done.value.code == 0 and validate_gguf_adapter(out).architecture == "phi3"
    with pytest.raises(SystemExit) as done:
        main(["adapter", str(tmp_path), "--base", str(tiny_checkpoint("phi3")), "-o", str(tmp_path / "b.gguf")])
    assert done.value.code == 3 and "adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "b.gguf").exists()


def test_merge_to_an_onnx_type_is_refused_and_nothing_written(adapters, tiny_checkpoint, tmp_path):
    with pytest.raises(BadRequestError, match="GGUF types only, not onnx:int4"):
        merge_adapter(adapters("llama3"), tiny_checkpoint("llama3"), "q8_0,onnx:int4", tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["llama3", "phi3", "gemma3"])
def test_merge_equals_peft_merge_and_unload(kind, adapters, tiny_checkpoint, tmp_path):
    """--merge F32 against PEFT's merge_and_unload saved and converted the ordinary way; and a Q8_0 alongside."""
    from quantize.convert import convert
    from tests.support.lora import merged_model

    base, peft_dir = tiny_checkpoint(kind), adapters(kind)
    ours = {r.type: r.path for r in merge_adapter(peft_dir, base, "f32,q8_0", tmp_path / "ours", quiet=True)}
    ref_dir = tmp_path / "peft-merged"
    merged_model(base, peft_dir).save_pretrained(ref_dir, safe_serialization=True)
    for f in base.iterdir():  # the tokenizer files
        if not (ref_dir / f.name).exists():
            shutil.copy(f, ref_dir / f.name)
    ref = convert(ref_dir, ["f32"], tmp_path / "ref", quiet=True, name="ref")[0].path
    got, want = gguf_tensors(ours["F32"])[0], gguf_tensors(ref)[0]
    assert sorted(got) == sorted(want)
    for t in want:
        np.testing.assert_allclose(
            got[t], want[t], rtol=0, atol=1e-5 * max(1.0, float(np.abs(want[t]).max())), err_msg=t
        )
    assert not np.array_equal(
        got["blk.0.attn_output.weight"],
        gguf_tensors(convert(base, ["f32"], tmp_path / "b", quiet=True, name="b")[0].path)[0][
            "blk.0.attn_output.weight"
        ],
    )
    assert ours["Q8_0"].stat().st_size < ours["F32"].stat().st_size / 3


@pytest.mark.parametrize("kind", ["llama3", "phi3", "gemma3"])
def test_llama_cpp_with_our_adapter_matches_peft_merged_logits(kind, adapters, tiny_checkpoint, tiny_gguf, tmp_path):
    """Logits of llama.cpp with our GGUF adapter on the F32 base against PEFT's merged model in
    transformers, within 1e-3 (of the std) of how far the two runtimes differ on the merged weights
    themselves (llama.cpp on our --merge output, which equals PEFT's merge to 1e-5): a random adapter
    moves the logits far, and the runtimes' own difference grows with them (2-3x the base's here)."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    from tests.support.lora import merged_model

    base, peft_dir, base_gguf = tiny_checkpoint(kind), adapters(kind), tiny_gguf(kind, "f32")
    adapter = convert_adapter(peft_dir, base, tmp_path / "a.gguf").path
    rng = np.random.default_rng(0)
    merged = merged_model(base, peft_dir)
    n_vocab = min(Llama(str(base_gguf), vocab_only=True, verbose=False).n_vocab(), merged.config.vocab_size)
    tokens = [int(t) for t in rng.integers(3, n_vocab, 24)]  # ids both runtimes know

    def llama(lora: Path | None, model: Path = base_gguf) -> np.ndarray:
        llm = Llama(str(model), lora_path=str(lora) if lora else None, n_ctx=64, logits_all=True, verbose=False)
        llm.eval(tokens)
        return np.asarray(llm.scores[: len(tokens), :n_vocab], dtype=np.float64)  # (n_tokens, n_vocab)

    def hf(model) -> np.ndarray:  # the config's vocab_size may pad the tokenizer's: compare the ids both have
        with torch.no_grad():
            return model(torch.tensor([tokens])).logits[0, :, :n_vocab].double().numpy()

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / b.std())

    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged_gguf = merge_adapter(peft_dir, base, "f32", tmp_path / "merged", quiet=True)[0].path
    ours, want = llama(adapter), hf(merged)
    runtimes = ratio(llama(None, merged_gguf), want)
    assert ratio(ours, hf(plain)) > 10 * (runtimes + 1e-3)  # the adapter changes the logits...
    assert ratio(ours, want) <= runtimes + 1e-3, (runtimes, ratio(ours, want))  # ...as PEFT's merge does
    top2 = np.sort(want, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * np.abs(ours - want).max()  # no near tie the difference can flip
    assert clear.sum() >= len(tokens) // 2 and (ours.argmax(-1) == want.argmax(-1))[clear].all()


def test_install_puts_a_validated_adapter_in_the_store(adapters, tiny_checkpoint, tiny_gguf, tmp_path, capsys):
    """PEFT folder or GGUF file -> $EDGE_HOME/adapters/NAME.gguf with its base recorded; bad input leaves
    nothing there (no file a server would list, no temp file)."""
    from edge.errors import OutputExistsError
    from edge.store import ModelStore
    from quantize.adapter_install import install_adapter
    from quantize.cli import main

    store = ModelStore(tmp_path / "home")
    folder = tmp_path / "home" / "adapters"
    base_gguf = tiny_gguf("llama3", "f32")
    got = install_adapter(adapters("llama3"), tiny_checkpoint("llama3"), "Desk", store=store)
    assert got.path == folder / "desk.gguf" and got.architecture == "llama"
    assert validate_gguf_adapter(got.path, base_gguf).rank == 4
    assert json.loads((folder / "desk.json").read_text())["base"] == str(tiny_checkpoint("llama3").resolve())
    assert store.adapters() == {"desk": got.path}
    copy = install_adapter(got.path, base_gguf, "desk-copy", store=store)  # a GGUF adapter is copied
    assert copy.path.read_bytes() == got.path.read_bytes()
    with pytest.raises(OutputExistsError):
        install_adapter(got.path, base_gguf, "desk", store=store)

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(got.path.read_bytes()[:1000])
    for source, base, name, error in (
        (cut, base_gguf, "cut", ModelFormatError),  # truncated
        (got.path, tiny_gguf("phi3", "f32"), "other", ModelFormatError),  # for another base
        (adapters("phi3"), tiny_checkpoint("llama3"), "wrong", Exception),  # PEFT folder for another model
        (got.path, tiny_checkpoint("llama3"), "hf-base", BadRequestError),  # a GGUF file needs a GGUF base
        (got.path, base_gguf, "Bad/Name", BadRequestError),
    ):
        with pytest.raises(error):
            install_adapter(source, base, name, store=store)
    assert sorted(p.name for p in folder.iterdir()) == ["desk-copy.gguf", "desk-copy.json", "desk.gguf", "desk.json"]

    env = {"EDGE_HOME": str(tmp_path / "cli-home")}
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as done:
        for k, v in env.items():
            mp.setenv(k, v)
        main(["adapter", str(adapters("llama3")), "--base", str(base_gguf), "--install", "desk", "-q"])
    assert done.value.code == 0 and (tmp_path / "cli-home" / "adapters" / "desk.gguf").is_file()
    with pytest.raises(SystemExit) as done:
        main(["adapter", str(adapters("llama3")), "--base", str(base_gguf), "--install", "x", "-o", "y.gguf"])
    assert done.value.code != 0 and "either -o" in capsys.readouterr().err
