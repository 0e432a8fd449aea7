"""One shared runner over every architecture: tiny random HF checkpoint -> our GGUF -> llama.cpp.

For each kind the checkpoint is converted to F32 and F16 by `quantize.convert.convert`, loaded by
llama-cpp-python, and compared with transformers (eager attention, fp32) on a fixed prompt of
N_PROMPT tokens followed by transformers' own N_GEN = 32 greedy tokens (prompt in one batch, then
one token at a time through llama.cpp's KV cache):

* logits: max |llama.cpp - transformers| over every position and real-vocabulary token must stay
  below tolerance(kind, type) * std(transformers logits);
* greedy decoding: llama.cpp's argmax equals transformers' greedy token at each of the 32 steps
  (at most MAX_TIES exact near-ties allowed, see the test).

Measured on these fixtures (`pytest tests/quantize/test_archs.py -k matches -s` prints each figure),
as fractions of the logits' std:
  F32 file, F32 KV cache: llama/phi3 1.4e-5 .. 4.1e-5; gemma/gemma2/gemma3 1.1e-3 .. 4.3e-3 (ggml
  evaluates GELU through an fp16 lookup table). F16 file, default F16 KV cache: 5e-3 .. 4.9e-2 (phi3).
Dropping one conversion detail moves the F32 error to 0.4 .. 2.5 std (query_pre_attn_scalar fold,
attention soft-cap, Gemma-3 layer pattern, Phi-3 attention factor), far outside the tolerances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.checkpoints import CAUSAL as KINDS  # the encoders have their own tests (test_bert.py)

pytestmark = pytest.mark.slow

# max |logit diff| as a fraction of the logits' std (measured values in the module docstring)
TOLERANCE = {"f32": 1e-3, "f16": 1e-1}
TOLERANCE_GELU_F32 = 1e-2  # Gemma family: ggml's fp16 GELU table alone costs ~4e-3


def tolerance(kind: str, qtype: str) -> float:
    return TOLERANCE_GELU_F32 if qtype == "f32" and kind.startswith("gemma") else TOLERANCE[qtype]


N_PROMPT = 24  # > SLIDING_WINDOW, so sliding layers see a window that differs from full attention
N_GEN = 32
MAX_TIES = 3  # of N_GEN greedy steps (phi3 F16 has 1-2: top-2 gaps of ~0.003 in its random logits)
N_CTX = 128  # <= Phi-3 fixture's original context (256): both runtimes use the short factors


def real_vocab(hf_dir: Path) -> int:
    return json.loads((hf_dir / "fixture_vocab_size.json").read_text())["vocab_size"]


def prompt_ids(n_vocab: int) -> list[int]:
    """A fixed pseudo-random token sequence (no tokenizer involved: this tests the weights)."""
    rng = np.random.default_rng(1234)
    return [int(t) for t in rng.integers(3, n_vocab, size=N_PROMPT)]


def hf_run(hf_dir: Path, ids: list[int], n_vocab: int) -> tuple[np.ndarray, list[int]]:
    """transformers' greedy continuation of `ids` and its logits at every position.

    -> logits (N_PROMPT + N_GEN, n_vocab) over prompt + continuation, continuation (N_GEN,)
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # tiny matrices: more threads only fight over the shared CPUs
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()
    seq = list(ids)
    with torch.no_grad():
        for _ in range(N_GEN):  # no KV cache: each step recomputes the whole (tiny) sequence
            step = model(torch.tensor([seq])).logits[0, -1, :n_vocab]
            seq.append(int(torch.argmax(step)))
        logits = model(torch.tensor([seq])).logits[0, :, :n_vocab].double().numpy()
    return logits, seq[len(ids) :]


def llamacpp_run(gguf_path: Path, ids: list[int], forced: list[int], *, kv_type: str = "f16") -> tuple[np.ndarray, int]:
    """llama.cpp's logits at every position when fed `ids` in one batch (prompt processing),
    then `forced` one token at a time (the decode path, through the KV cache of `kv_type`).

    -> logits (len(ids) + len(forced), n_vocab), n_vocab
    """
    import llama_cpp
    from llama_cpp import Llama

    kv = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}[kv_type]
    llm = Llama(
        model_path=str(gguf_path),
        n_ctx=N_CTX,
        n_batch=N_CTX,
        logits_all=True,
        n_threads=1,
        seed=0,
        verbose=False,
        type_k=kv,
        type_v=kv,
    )
    try:
        llm.eval(ids)
        for tok in forced:
            llm.eval([tok])
        return np.array(llm.scores[: llm.n_tokens], dtype=np.float64), llm.n_vocab()
    finally:
        llm.close()


@pytest.fixture(scope="session")
def hf_reference(tiny_checkpoint):
    cache: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in cache:
            hf_dir = tiny_checkpoint(kind)
            n_vocab = real_vocab(hf_dir)
            ids = prompt_ids(n_vocab)
            cache[kind] = (ids, n_vocab, *hf_run(hf_dir, ids, n_vocab))
        return cache[kind]

    return get


def greedy_disagreements(cpp: np.ndarray, hf: np.ndarray) -> list[tuple[int, float]]:
    """Steps of the continuation where llama.cpp's argmax differs from transformers' greedy token,
    with transformers' gap between its choice and llama.cpp's. cpp, hf: (N_PROMPT + N_GEN, n_vocab)."""
    out = []
    for pos in range(N_PROMPT - 1, N_PROMPT - 1 + N_GEN):
        c, h = int(np.argmax(cpp[pos])), int(np.argmax(hf[pos]))
        if c != h:
            out.append((pos - N_PROMPT + 1, float(hf[pos, h] - hf[pos, c])))
    return out


@pytest.mark.parametrize("qtype", ["f32", "f16"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_llamacpp_matches_transformers(kind, qtype, tiny_gguf, hf_reference):
    ids, n_vocab, hf_logits, hf_greedy = hf_reference(kind)
    # The F32 file runs with an F32 KV cache: llama.cpp's default F16 cache alone costs ~1e-2 std.
    cpp_logits, cpp_vocab = llamacpp_run(tiny_gguf(kind, qtype), ids, hf_greedy, kv_type=qtype)

    assert cpp_vocab == n_vocab, "the GGUF vocabulary must be the tokenizer's (no OOV rows)"
    std = float(hf_logits.std())
    assert std > 0.5, f"fixture logits are too flat (std {std:.3f}) to compare greedy decoding"
    diff, tol = float(np.abs(cpp_logits - hf_logits).max()), tolerance(kind, qtype)
    assert diff <= tol * std, f"{kind} {qtype}: max |logit diff| {diff:.4g} > {tol} * std {std:.4g}"
    # Greedy: llama.cpp picks transformers' token at each of the N_GEN steps. Where it does not,
    # the logit bound above already implies transformers' own top-2 gap is <= 2 * diff (a near-tie
    # within float error); such steps are reported and at most MAX_TIES are accepted.
    ties = greedy_disagreements(cpp_logits, hf_logits)
    print(
        f"\n{kind} {qtype}: max |logit diff| = {diff / std:.2e} std (tolerance {tol:g}), "
        f"greedy near-ties {len(ties)}/{N_GEN}"
    )
    assert len(ties) <= MAX_TIES, f"{kind} {qtype}: {len(ties)} near-ties in {N_GEN} steps: {ties}"


# What each converted file must say about itself, beyond matching logits.
EXPECTED_META = {
    "llama3": {"tensors": {"rope_freqs.weight", "output.weight"}},
    "llama3-tied": {"tensors": {"rope_freqs.weight"}, "absent": {"output.weight"}},
    "llama2": {"tensors": {"output.weight"}, "absent": {"rope_freqs.weight"}},
    "phi3": {
        "tensors": {
            "rope_factors_long.weight",
            "rope_factors_short.weight",
            "blk.0.attn_qkv.weight",
            "blk.0.ffn_up.weight",
        },
        "absent": {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"},
        "kv": {"phi3.rope.scaling.attn_factor": 1.1180339887, "phi3.rope.scaling.original_context_length": 256},
    },
    "gemma": {"absent": {"output.weight"}},
    "gemma2": {
        "absent": {"output.weight"},
        "kv": {
            "gemma2.attn_logit_softcapping": 5.0,
            "gemma2.final_logit_softcapping": 4.0,
            "gemma2.attention.sliding_window": 8,
        },
    },
    "gemma3": {
        "absent": {"output.weight"},
        "kv": {
            "gemma3.attention.sliding_window": 8,
            "gemma3.rope.freq_base": 1e6,
            "gemma3.rope.freq_base_swa": 1e4,
            "gemma3.rope.scaling.factor": 8.0,
            "gemma3.attention.sliding_window_pattern": [1, 1, 0, 1, 1, 0],
        },
    },
}


def _field_value(field):
    import gguf

    vals = [field.parts[i].tolist() for i in field.data]
    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
        return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in vals]
    v = vals[0]
    return v[0] if isinstance(v, list) and len(v) == 1 else v


@pytest.mark.parametrize("kind", list(EXPECTED_META))
def test_metadata_and_tensors(kind, tiny_gguf):
    import gguf

    reader = gguf.GGUFReader(tiny_gguf(kind, "f32"))
    names = {t.name for t in reader.tensors}
    want = EXPECTED_META[kind]
    assert want.get("tensors", set()) <= names, f"missing {want['tensors'] - names}"
    assert not (want.get("absent", set()) & names), f"unexpected {want['absent'] & names}"
    for key, value in want.get("kv", {}).items():
        assert key in reader.fields, f"{key} not written"
        got = _field_value(reader.fields[key])
        if isinstance(value, list):
            assert [int(bool(x)) for x in got] == value, key
        else:
            assert got == pytest.approx(value, rel=1e-6), key


def test_gemma3_trims_out_of_vocabulary_rows(tiny_checkpoint, tiny_gguf):
    import gguf

    n_vocab = real_vocab(tiny_checkpoint("gemma3"))
    reader = gguf.GGUFReader(tiny_gguf("gemma3", "f32"))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert [int(x) for x in embd.shape] == [128, n_vocab]  # GGUF order: (n_embd, n_vocab)


@pytest.mark.parametrize("kind", KINDS)
def test_unpack_restores_hf_weights(kind, tiny_checkpoint, tiny_gguf, hf_reference, tmp_path):
    """GGUF -> HF (unpack) undoes every transform: the weights and config come back as they went
    in, and transformers computes the same logits from the unpacked folder."""
    from safetensors.numpy import load_file

    from quantize.unpack import unpack

    src = tiny_checkpoint(kind)
    out = unpack(tiny_gguf(kind, "f32"), tmp_path / "hf")
    n_vocab = real_vocab(src)
    orig = load_file(src / "model.safetensors")
    back = {}
    for f in sorted(Path(out).glob("*.safetensors")):
        back.update(load_file(f))
    tied = "lm_head.weight" not in back
    for name, w in orig.items():
        if name == "lm_head.weight" and tied:
            continue
        assert name in back, f"{kind}: unpack lost {name}"
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            w = w[:n_vocab]  # (n_vocab, n_embd): OOV rows are trimmed on purpose
        np.testing.assert_allclose(back[name], w, rtol=1e-5, atol=1e-6, err_msg=f"{kind}: {name}")
    cfg_in = json.loads((src / "config.json").read_text())
    cfg_out = json.loads((Path(out) / "config.json").read_text())
    for key in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "rope_theta",
        "sliding_window",
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "rope_local_base_freq",
        "layer_types",
        "rope_scaling",
    ):
        if cfg_in.get(key) is not None:
            assert _same(cfg_out.get(key), cfg_in[key]), f"{kind}: config {key}: {cfg_out.get(key)}"
    ids, n_vocab, hf_logits, greedy = hf_reference(kind)
    got = _hf_logits(Path(out), ids + greedy)[:, :n_vocab]
    assert np.abs(got - hf_logits).max() <= 1e-4 * hf_logits.std(), f"{kind}: unpacked model differs"


def _hf_logits(hf_dir: Path, ids: list[int]) -> np.ndarray:
    """transformers' logits (len(ids), vocab) for a checkpoint folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _same(a, b) -> bool:
    """Equal up to float32 rounding (GGUF stores floats as f32), recursively."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == pytest.approx(b, rel=1e-6)
    return a == b


def test_config_errors_name_the_problem():
    from edge.errors import ModelFormatError, UnsupportedArchitectureError
    from quantize.archs import get_arch

    with pytest.raises(UnsupportedArchitectureError, match="Gemma3ForCausalLM"):
        get_arch("gemma3").load_config({"model_type": "gemma3", "text_config": {"hidden_size": 640}})
    phi3 = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 1024,
        "rope_scaling": {"type": "longrope", "long_factor": [1.0] * 3, "short_factor": [1.0] * 16},
    }
    with pytest.raises(ModelFormatError, match="long_factor has 3 values, expected 16"):
        get_arch("phi3").load_config(phi3)
    with pytest.raises(ModelFormatError, match="not supported for Phi-3"):
        get_arch("phi3").load_config({**phi3, "rope_scaling": {"type": "dynamic"}})


def test_llama3_rope_scaling_is_solved_from_the_factors_of_a_foreign_file():
    """A GGUF from another converter has only rope_freqs: Llama-3.1-8B's and 3.2's settings come back."""
    from quantize.archs.llama import LlamaConfig, llama3_rope_factors, llama3_rope_scaling

    for factor, head_dim in ((8.0, 128), (32.0, 64)):  # Llama-3.1-8B, Llama-3.2-1B
        rs = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        cfg = LlamaConfig.from_dict(
            {
                "hidden_size": head_dim * 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "vocab_size": 8,
                "rope_theta": 500000.0,
                "rope_scaling": rs,
            }
        )
        assert llama3_rope_scaling(llama3_rope_factors(cfg), 500000.0, head_dim) == rs
    assert llama3_rope_scaling(np.ones(64, dtype=np.float32), 500000.0, 128) is None
