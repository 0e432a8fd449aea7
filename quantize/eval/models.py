"""Models that give logits for the evaluation: a GGUF file in llama.cpp, an ONNX folder in onnxruntime.

Both implement LogitsModel: tokenize the text, give the logits of one chunk (llama.cpp: one
llama_batch with the logits flag set only on the scored half, read with llama_get_logits), and
time prompt and generation speed the way llama-bench's pp/tg do.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.errors import BadRequestError, EdgeError, ModelFormatError, NotFoundError

SPEED_PROMPT, SPEED_GEN = 128, 32  # tokens for the prompt and generation speed figures (as llama-bench pp/tg)


class LogitsModel(Protocol):
    n_vocab: int
    n_params: int

    def tokenize(self, text: bytes) -> np.ndarray: ...  # (n_tokens,) int32

    def chunk_logits(self, tokens: np.ndarray, first: int) -> np.ndarray: ...  # (ctx - first, n_vocab) f32

    def speed(self, tokens: np.ndarray) -> tuple[float, float]: ...  # prompt, generation tokens/s

    def close(self) -> None: ...


class GgufModel:
    """A GGUF file in llama.cpp with one context of `ctx` tokens, decoded one chunk per llama_batch."""

    def __init__(self, path: Path, ctx: int, n_threads: int | None = None, cb_eval=None):
        import llama_cpp as L

        self.L, self.path = L, Path(path)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(os.fsencode(self.path), mparams)
        if not self.model:
            raise ModelFormatError(f"llama.cpp could not load {path}; check that it is a complete GGUF model")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_params = int(L.llama_model_n_params(self.model))
        cparams = L.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = ctx
        cparams.n_ubatch = min(ctx, 512)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = n_threads or os.cpu_count() or 1
        cparams.no_perf = True
        if cb_eval is not None:
            cparams.cb_eval, cparams.cb_eval_user_data = cb_eval, None
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise EdgeError(
                f"llama.cpp could not create a context of {ctx} tokens for {path}; try a smaller --eval-ctx"
            )
        self.n_ctx = ctx
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.bos = L.llama_vocab_bos(self.vocab)
        self.batch = L.llama_batch_init(ctx, 0, 1)

    def tokenize(self, text: bytes) -> np.ndarray:
        n_max = len(text) + 16
        buf = (self.L.llama_token * n_max)()
        n = self.L.llama_tokenize(self.vocab, text, len(text), buf, n_max, True, False)
        if n < 0:
            raise EdgeError(f"tokenizing the evaluation text failed (needs {-n} tokens)")
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32)  # (n,)

    def _decode(self, tokens: np.ndarray, first: int) -> int:
        """Decode tokens at positions 0.. with logits for positions >= first; returns the output count."""
        L, b = self.L, self.batch
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        n = len(tokens)
        for i in range(n):
            b.token[i] = int(tokens[i])
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i >= first
        b.n_tokens = n
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise EdgeError(f"llama_decode failed with code {rc} on {self.path.name}")
        return n - first

    def chunk_logits(self, tokens: np.ndarray, first: int) -> np.ndarray:
        n_out = self._decode(tokens, first)
        ptr = self.L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)).copy()  # (ctx - first, n_vocab)

    def speed(self, tokens: np.ndarray) -> tuple[float, float]:
        """Prompt tokens/s (one batch of SPEED_PROMPT) and generation tokens/s (greedy, SPEED_GEN steps)."""
        L = self.L
        prompt = tokens[: min(SPEED_PROMPT, self.n_ctx - SPEED_GEN - 1)]
        self._decode(prompt[:8], len(prompt[:8]) - 1)  # warm-up
        t0 = time.perf_counter()
        self._decode(prompt, len(prompt) - 1)
        pp = len(prompt) / (time.perf_counter() - t0)
        sampler = L.llama_sampler_init_greedy()
        try:
            one = L.llama_batch_get_one
            pos, t0 = len(prompt), time.perf_counter()
            for _ in range(SPEED_GEN):
                tok = (L.llama_token * 1)(L.llama_sampler_sample(sampler, self.ctx, -1))
                if L.llama_decode(self.ctx, one(tok, 1)) != 0:
                    raise EdgeError(f"llama_decode failed while timing generation on {self.path.name}")
                pos += 1
            tg = SPEED_GEN / (time.perf_counter() - t0)
        finally:
            L.llama_sampler_free(sampler)
        return pp, tg

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.L.llama_model_free(self.model)
            self.ctx = None

    def __enter__(self) -> GgufModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OnnxModel:
    """An edge-quantize ONNX folder in onnxruntime, through the runtime's own batcher (edge.engine.onnx.backend)."""

    def __init__(self, folder: Path, ctx: int, n_threads: int | None = None):
        from edge.engine.onnx.backend import OnnxBatcher

        self.path = Path(folder)
        self.b = OnnxBatcher(self.path, n_ctx=ctx, n_parallel=1, n_threads=n_threads or os.cpu_count() or 1)
        if self.b.n_ctx < ctx:
            raise BadRequestError(f"{folder} holds {self.b.n_ctx} positions, fewer than --eval-ctx {ctx}")
        self.n_vocab = self.b.n_vocab
        self.n_params = int(self.b.m.get("parameter_count") or 0)
        self.n_ctx = ctx

    def tokenize(self, text: bytes) -> np.ndarray:
        return np.asarray(self.b.vocab.tokenize(text.decode("utf-8", "replace"), True), dtype=np.int32)

    def chunk_logits(self, tokens: np.ndarray, first: int) -> np.ndarray:
        return self.b.logits_all(0, [int(t) for t in tokens], 0)[first:]  # (ctx - first, n_vocab)

    def speed(self, tokens: np.ndarray) -> tuple[float, float]:
        """As GgufModel.speed: one prompt batch, then greedy single-token steps on the KV cache."""
        prompt = [int(t) for t in tokens[: min(SPEED_PROMPT, self.n_ctx - SPEED_GEN - 1)]]
        self.b.logits_all(0, prompt[:8], 0)  # warm-up
        t0 = time.perf_counter()
        last = self.b.logits_all(0, prompt, 0)[-1]
        pp = len(prompt) / (time.perf_counter() - t0)
        pos, t0 = len(prompt), time.perf_counter()
        for _ in range(SPEED_GEN):
            [row] = self.b.decode([(0, [int(np.argmax(last))], pos, True)])
            last, pos = self.b.row_logits(row), pos + 1
        return pp, SPEED_GEN / (time.perf_counter() - t0)

    def close(self) -> None:
        self.b.free()


def open_model(path: Path, ctx: int, n_threads: int | None = None) -> LogitsModel:
    """A GGUF file (llama.cpp) or an edge-quantize ONNX folder (onnxruntime)."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{path} does not exist")
    if path.is_dir() and (path / "model.onnx").is_file():
        return OnnxModel(path, ctx, n_threads)
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GgufModel(path, ctx, n_threads)
    raise ModelFormatError(f"{path} is neither a GGUF file nor an ONNX model folder written by edge-quantize")
