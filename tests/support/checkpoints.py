"""Tiny random Hugging Face checkpoints of every architecture edge-quantize converts.

`make_checkpoint(kind, dir)` builds one with transformers' own config and model classes (random
weights, fixed seed), saves it as safetensors with its tokenizer files, and returns `dir`.
Everything is generated offline; transformers and torch are test-only dependencies.

The weights are deliberately *not* transformers' tiny default init: with std 0.02 the logits are
nearly flat and greedy comparisons between two runtimes hit near-ties (ANCHORS.md). We use
`initializer_range=0.2` and random norm weights, so every norm (and Gemma's +1 on it) matters.
Each kind also turns on the feature its converter must handle (llama3 rope factors, longrope,
soft-caps, sliding windows short enough to bite within a test sequence, OOV embedding rows, a
query_pre_attn_scalar that differs from head_dim, ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.tokenizers import write_tokenizer

HIDDEN = 128  # (n_embd,) small enough to build in < 1 s, big enough for clear logit margins
INTERMEDIATE = 256
INIT_STD = 0.2
SLIDING_WINDOW = 8  # tokens; shorter than the test sequences, so the window changes the result

# Extra embedding rows beyond the tokenizer's vocabulary (Gemma 3 ships 262208 rows for 262145
# tokens); the converter must trim them.
GEMMA3_OOV_ROWS = 64


@dataclass(frozen=True)
class Kind:
    """How one fixture kind is built."""

    tokenizer: str  # kind for tests.support.tokenizers.write_tokenizer
    config: Callable[[int, dict[str, int | None]], Any]  # (vocab_size, special ids) -> HF config
    model_cls: str  # transformers class name
    seed: int
    gemma_norms: bool = False  # HF stores w and computes x * (1 + w): random w around 0
    extra_rows: int = 0  # embedding rows beyond the tokenizer's vocabulary
    notes: dict[str, Any] = field(default_factory=dict)


def _llama3(vocab: int, ids: dict[str, int | None], *, tied: bool):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA 2:1
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        # original_max_position_embeddings is tiny on purpose: with 64 the low/high frequency
        # bands fall inside head_dim 32, so all three branches of llama3 scaling are used.
        rope_scaling={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=tied,
        initializer_range=INIT_STD,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=None,
    )


def _llama2(vocab: int, ids: dict[str, int | None]):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,  # plain MHA
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=None,
    )


def _phi3(vocab: int, ids: dict[str, int | None]):
    from transformers import Phi3Config

    head_dim = HIDDEN // 4
    n = head_dim // 2
    # Non-trivial factors (short ones too): a converter that drops or swaps them changes logits.
    short = [1.0 + 0.5 * i / (n - 1) for i in range(n)]  # (head_dim/2,)
    long = [1.0 + 7.0 * (i / (n - 1)) ** 2 for i in range(n)]  # (head_dim/2,)
    return Phi3Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # fused qkv with GQA
        # max/original = 4 gives an attention factor sqrt(1 + ln 4 / ln 256) = 1.118.
        # The tests run with a context <= 256, where both runtimes pick the short factors.
        max_position_embeddings=1024,
        original_max_position_embeddings=256,
        rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long},
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        # llama.cpp ignores Phi-3's sliding window (it warns); keep it longer than any test input.
        sliding_window=2047,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=None,
    )


def _gemma(vocab: int, ids: dict[str, int | None]):
    from transformers import GemmaConfig

    return GemmaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,  # MQA like Gemma-2B
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )


def _gemma2(vocab: int, ids: dict[str, int | None]):
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh",
        # 48 != head_dim 32: llama.cpp scales queries by 1/sqrt(head_dim), so the converter has
        # to fold the difference into the weights.
        query_pre_attn_scalar=48,
        # Caps low enough to bite on these logits (a converter dropping them fails the test).
        attn_logit_softcapping=5.0,
        final_logit_softcapping=4.0,
        sliding_window=SLIDING_WINDOW,  # layers 0 and 2 slide, 1 and 3 are global
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )


def _gemma3(vocab: int, ids: dict[str, int | None]):
    from transformers import Gemma3TextConfig

    n_layers, pattern = 6, 3
    layer_types = [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
    ]  # s s F s s F: not llama.cpp's default of 6
    return Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},  # global layers only (Gemma-3 4B+)
        query_pre_attn_scalar=24,
        sliding_window=SLIDING_WINDOW,
        layer_types=layer_types,
        sliding_window_pattern=pattern,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )


def _qwen2(vocab: int, ids: dict[str, int | None]):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA 2:1, with Qwen2's q/k/v biases
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=None,
    )


def _bert(vocab: int, ids: dict[str, int | None]):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        initializer_range=INIT_STD,
        pad_token_id=ids["pad"] or 0,
    )


OPTIMUM_ONLY = ("qwen2",)

KINDS: dict[str, Kind] = {
    "llama3": Kind("llama3", lambda v, i: _llama3(v, i, tied=False), "LlamaForCausalLM", 3),
    "llama3-tied": Kind("llama3", lambda v, i: _llama3(v, i, tied=True), "LlamaForCausalLM", 31),
    "llama2": Kind("llama2", _llama2, "LlamaForCausalLM", 2),
    "phi3": Kind("phi3", _phi3, "Phi3ForCausalLM", 33),
    "gemma": Kind("gemma", _gemma, "GemmaForCausalLM", 7, gemma_norms=True),
    "gemma2": Kind("gemma", _gemma2, "Gemma2ForCausalLM", 8, gemma_norms=True),
    "gemma3": Kind("gemma3-json", _gemma3, "Gemma3ForCausalLM", 9, gemma_norms=True, extra_rows=GEMMA3_OOV_ROWS),
    # an encoder (BertModel: hidden states, no logits) with its WordPiece vocabulary
    "bert": Kind("bert", _bert, "BertModel", 11),
    # a decoder with a Unigram vocabulary (XLM-RoBERTa's tokenizer.json): the vocabulary path is the point
    "llama-unigram": Kind("xlmr", _llama2, "LlamaForCausalLM", 12),
    # an architecture our converters lack: edge-quantize exports it to ONNX through optimum
    "qwen2": Kind("llama3", _qwen2, "Qwen2ForCausalLM", 13),
}
# the architectures our own converters handle (GGUF and the ONNX graph builder)
CAUSAL = tuple(
    k
    for k, s in KINDS.items()
    if s.model_cls.endswith("ForCausalLM") and s.tokenizer != "xlmr" and k not in OPTIMUM_ONLY
)

_BOS = ("<|begin_of_text|>", "<bos>", "<s>")
_EOS = ("<|end_of_text|>", "<eos>", "</s>", "<|endoftext|>")
_PAD = ("<pad>", "<|finetune_right_pad_id|>", "[PAD]")


def special_ids(tok_dir: Path) -> dict[str, int | None]:
    """bos/eos/pad ids of the tokenizer files in `tok_dir` (tokenizer.json or tokenizer.model)."""

    def first(find: Callable[[str], int | None], names: tuple[str, ...]) -> int | None:
        return next((i for i in map(find, names) if i is not None), None)

    if (tok_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        find = tok.token_to_id
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
        find = lambda s: i if (i := sp.piece_to_id(s)) != sp.unk_id() or s == "<unk>" else None  # noqa: E731
    return {"bos": first(find, _BOS), "eos": first(find, _EOS), "pad": first(find, _PAD)}


def _randomize_norms(model, *, gemma: bool) -> None:
    """Norm weights that are not all ones (llama-style) or all zeros (Gemma stores w for 1 + w)."""
    import torch

    for name, p in model.named_parameters():
        if name.endswith(("norm.weight", "LayerNorm.weight")):
            with torch.no_grad():
                if gemma:
                    p.normal_(0.0, 0.3)  # effective scale 1 + w
                else:
                    p.uniform_(0.5, 1.5)


def build_model(kind: str, tok_dir: Path):
    """The transformers model for `kind` with the vocabulary written in `tok_dir` (fp32, eval)."""
    import torch
    import transformers

    spec = KINDS[kind]
    n_vocab = _tokenizer_vocab_size(tok_dir)
    config = spec.config(n_vocab + spec.extra_rows, special_ids(tok_dir))
    config._attn_implementation = "eager"
    torch.manual_seed(spec.seed)
    model = getattr(transformers, spec.model_cls)(config).eval()
    _randomize_norms(model, gemma=spec.gemma_norms)
    return model


def _tokenizer_vocab_size(tok_dir: Path) -> int:
    meta = json.loads((tok_dir / "fixture_vocab_size.json").read_text())
    return int(meta["vocab_size"])


def make_checkpoint(kind: str, dir: Path, *, dtype: str = "float32") -> Path:
    """Write a tiny random `kind` checkpoint (config.json, model.safetensors, tokenizer) to `dir`.

    kind: one of KINDS. dtype: "float32" | "float16" | "bfloat16" (the stored weight dtype).
    Also writes `fixture_vocab_size.json` ({"vocab_size": tokenizer vocabulary size}), which the
    tests use to compare only real-token logits (gemma3 has extra rows).
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {sorted(KINDS)}")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    n_vocab = write_tokenizer(dir, KINDS[kind].tokenizer)
    (dir / "fixture_vocab_size.json").write_text(json.dumps({"vocab_size": n_vocab}))
    model = build_model(kind, dir)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(dir, safe_serialization=True)
    return dir
