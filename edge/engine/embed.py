"""Sentence embeddings on llama.cpp: a context of its own, many inputs per `llama_decode`.

**Pooling.** The GGUF's `<arch>.pooling_type` decides (mean, cls or last), as llama-server does. A
model without one is a generative model (SmolLM2, Gemma-3): it embeds with **last-token** pooling,
the hidden state of the final token, which has read the whole input under causal attention (what
causal embedding models such as e5-mistral or Qwen3-Embedding use). Every vector is L2-normalised;
`dimensions` keeps the first N values and normalises again (Matryoshka-style truncation).

**Batching.** Inputs are packed into as few `llama_decode` calls as fit `n_batch` tokens and
`n_seq_max` sequences (sequence id = position in the call), and read back per sequence with
`llama_get_embeddings_seq`.

**Same vector alone or in a batch**, with `exact` (EDGE_EMBED_EXACT=on; it costs about half the
throughput). Off, as in llama-server, an input alone and in a batch differ by up to ~2e-3 in
1 - cosine on quantized models. On, an input gives the same vector, bit for bit, whatever else shares
its call. llama.cpp's arithmetic depends on where a sequence sits in the call and on the call's size:
its attention sums run in SIMD lanes over the KV cells (or, in an encoder, the call's rows), so an
input starting at another cell rounds differently, and the CPU flash-attention kernel switches to
another algorithm when a call holds many query rows. The rounding is tiny, but a quantized model
re-quantizes its activations before every matmul, which turns it into cosine differences of 1e-4 to
2e-3. So flash attention is off in this context, every input starts at a multiple of `ALIGN` rows
(and KV cells), and a call holds a multiple of `ALIGN` tokens: the gaps are filled with tokens of a
spacer sequence (the last id) whose output nobody reads. That costs at most `ALIGN - 1` extra tokens
per input. An encoder (bidirectional attention) sees a whole input in one call, so
its `n_batch` is its context. A causal model with last-token pooling may split an input longer than
`n_batch` over several calls: its KV cache keeps the earlier chunks, and the pooled value of the
last call is the last token's, which is exact.

**Not stalling generation.** The embedder owns its own llama.cpp context on the model's weights (no
second copy of them), and runs on one worker thread of its own (`EmbedWorker`), so the decode
thread of the generation slots never waits for an embedding request: the two only share CPU cores.
Embedding requests run one at a time; at most `max_waiting` wait, beyond that QueueFullError (503).
The routes bound each request (`EDGE_EMBED_MAX_INPUTS`, `EDGE_EMBED_MAX_TOKENS`), so one request
holds the worker for a bounded time.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from edge.engine.base import Embeddings
from edge.errors import BadRequestError, ContextOverflowError, DoesNotFitError, EdgeError, QueueFullError
from edge.lightimport import llama_module

L = llama_module("llama_cpp")

POOLING = {"mean": 1, "cls": 2, "last": 3}  # llama.cpp's LLAMA_POOLING_TYPE_* values
POOLING_NAMES = {v: k for k, v in POOLING.items()}
ENCODER_DEFAULT_POOLING = "mean"  # an encoder whose GGUF names no (usable) pooling
CAUSAL_DEFAULT_POOLING = "last"  # a generative model: see the module's docstring
MAX_SEQS = 64  # sequences in one decode (llama.cpp allows 256; 64 short sentences already fill n_batch)
# inputs start at multiples of this many rows: a multiple of every CPU's float SIMD width (AVX-512: 16)
ALIGN = 16
# A causal model's embedding context still computes logits for every token it evaluates
# (n_vocab floats each): n_batch is chosen so that buffer stays within this many bytes.
LOGITS_BUDGET = 64 << 20
MIN_CAUSAL_BATCH = 32

T = TypeVar("T")


def pooling_for(metadata: dict[str, str], arch: str, encoder: bool) -> str:
    """The pooling to use: the GGUF's mean/cls/last, else mean for an encoder, last for a generative model."""
    raw = metadata.get(f"{arch}.pooling_type")
    try:
        name = POOLING_NAMES.get(int(raw)) if raw is not None else None
    except ValueError:
        name = None
    return name or (ENCODER_DEFAULT_POOLING if encoder else CAUSAL_DEFAULT_POOLING)


def normalize(vector: Sequence[float], dimensions: int | None = None) -> list[float]:
    """The first `dimensions` values (all when None), scaled to unit L2 norm (a zero vector stays zero)."""
    head = list(vector[:dimensions] if dimensions else vector)
    norm = math.sqrt(math.fsum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head


def fit_inputs(inputs: list[list[int]], limit: int, *, truncate: bool, keep_last: bool) -> list[list[int]]:
    """Each input within `limit` tokens: cut (keeping the closing separator when the vocabulary adds one,
    as sentence-transformers does) or, with truncate false, a 400 that says how long it was."""
    out = []
    for i, tokens in enumerate(inputs):
        if len(tokens) <= limit:
            out.append(tokens)
        elif not truncate:
            raise ContextOverflowError(
                f"input {i} has {len(tokens)} tokens but this model embeds at most {limit}; shorten it or "
                "send truncate: true to cut it to the first tokens",
                param="input",
            )
        else:
            out.append(tokens[: limit - 1] + tokens[-1:] if keep_last else tokens[:limit])
    return out


def align_up(n: int, align: int = ALIGN) -> int:
    return -(-n // align) * align


def plan_batches(lengths: Sequence[int], n_batch: int, n_seqs: int) -> list[list[int]]:
    """Input indices grouped into decode calls of at most n_batch tokens and n_seqs sequences, in order.
    An input longer than n_batch is a group of its own (decoded in chunks)."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and (used + n > n_batch or len(current) >= n_seqs):
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        groups.append(current)
    return groups


class LlamaCppEmbedder:
    """A llama.cpp context with embeddings on, over an already loaded model (its owner frees the model).

    Not thread-safe: `EmbedWorker` runs every call on one thread."""

    def __init__(
        self,
        model,
        *,
        arch: str,
        metadata: dict[str, str],
        encoder: bool,
        n_ctx: int,
        n_threads: int,
        exact: bool = False,
    ):
        """`exact`: the same vector alone or in any batch (see the module's docstring; off: llama.cpp's
        own arithmetic, about twice as fast)."""
        self.exact = exact
        self.align = ALIGN if exact else 1
        self.model = model
        self.vocab = L.llama_model_get_vocab(model)
        self.encoder = encoder
        self.pooling = pooling_for(metadata, arch, encoder)
        self.n_embd = L.llama_model_n_embd_out(model) or L.llama_model_n_embd(model)
        n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx  # most tokens of one input
        if encoder:
            self.n_batch = align_up(n_ctx, self.align)  # bidirectional attention: an input must sit in one call
        else:
            self.n_batch = max(MIN_CAUSAL_BATCH, min(n_ctx, LOGITS_BUDGET // (4 * n_vocab))) // self.align * self.align
        # an input longer than n_batch is decoded in chunks, which only last-token pooling survives
        self.chunked = not encoder and self.pooling == "last"
        if not self.chunked:
            self.n_ctx = min(self.n_ctx, self.n_batch)
        # sequences in one call: each input takes ALIGN rows or more, and llama.cpp reserves its graph
        # with n_batch / n_seq_max rows per sequence, so n_seq_max divides n_batch
        n_seq_max = next(d for d in range(min(MAX_SEQS, self.n_batch // self.align), 0, -1) if self.n_batch % d == 0)
        self.n_seqs = n_seq_max - 1  # inputs in one call
        self.spacer = n_seq_max - 1  # the sequence id of the filler tokens (see the module's docstring)
        self.keep_last = bool(L.llama_vocab_get_add_eos(self.vocab) or L.llama_vocab_get_add_sep(self.vocab))
        self.ctx = self._context(n_threads)
        self.mem = L.llama_get_memory(self.ctx)  # None for an encoder: nothing is cached between calls
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)  # token/pos/seq_id/logits arrays of n_batch

    def _context(self, n_threads: int):
        params = L.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = POOLING[self.pooling]
        # one KV stream shared by all sequences of a call (cleared before each call); per-sequence streams
        # would split a call into equal-length ubatches and pool partial sequences
        params.kv_unified = True
        params.n_ctx = max(self.n_ctx, self.n_batch)
        params.n_batch = params.n_ubatch = self.n_batch  # one ubatch per call: pooling sees whole inputs
        params.n_seq_max = self.n_seqs + 1  # the inputs and the spacer
        if self.exact:
            params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # see "Same vector" in the module's docstring
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        ctx = L.llama_init_from_model(self.model, params)
        if not ctx:
            raise DoesNotFitError(
                f"llama.cpp could not create an embedding context of {self.n_ctx} tokens; lower --ctx"
            )
        return ctx

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """The pooled (not normalised) vector of each input, each within n_ctx tokens and non-empty."""
        out: list[list[float]] = [[] for _ in inputs]
        for group in plan_batches([align_up(len(t), self.align) for t in inputs], self.n_batch, self.n_seqs):
            if len(inputs[group[0]]) > self.n_batch:
                out[group[0]] = self._embed_long(inputs[group[0]])
                continue
            self._decode([(seq, inputs[i], 0) for seq, i in enumerate(group)])
            for seq, i in enumerate(group):
                out[i] = self._read(seq)
        return out

    def _embed_long(self, tokens: list[int]) -> list[float]:
        """One input over several calls (last-token pooling on a causal model only; see `chunked`)."""
        assert self.chunked
        self._clear()
        for start in range(0, len(tokens), self.n_batch):
            self._decode([(0, tokens[start : start + self.n_batch], start)], clear=False, aligned=False)
        return self._read(0)

    def _clear(self) -> None:
        if self.mem:
            L.llama_memory_clear(self.mem, True)

    def _decode(self, entries: list[tuple[int, list[int], int]], *, clear: bool = True, aligned: bool = True) -> None:
        """(sequence id, tokens, first position) entries in one llama_decode; every token is an output
        (llama.cpp pools over the outputs). `aligned`: each entry starts at a multiple of ALIGN rows and
        the call ends on one, spacer tokens filling the gaps (the chunks of one long input are not: that
        input is always decoded alone, the same way)."""
        if clear:
            self._clear()
        b = self.batch
        n = spaced = 0
        for seq, tokens, pos0 in [*entries, (self.spacer, [], 0)]:
            while aligned and n % self.align:  # the spacer's tokens: any valid id, consecutive positions
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = entries[0][1][0], spaced, 1, 1
                b.seq_id[n][0] = self.spacer
                n, spaced = n + 1, spaced + 1
            for j, tok in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos0 + j, 1, 1
                b.seq_id[n][0] = seq
                n += 1
        b.n_tokens = n
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise EdgeError(f"llama_decode failed with code {rc} on an embedding batch of {n} tokens")

    def _read(self, seq: int) -> list[float]:
        ptr = L.llama_get_embeddings_seq(self.ctx, seq)
        if not ptr:
            raise EdgeError(f"llama.cpp returned no pooled embedding for sequence {seq}")
        return ptr[: self.n_embd]  # (n_embd,) copied out of llama.cpp's buffer

    def free(self) -> None:
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None


class EmbedWorker:
    """One thread that runs embedding calls in turn, with at most `max_waiting` calls waiting (more: 503).

    A thread of its own, not the event loop's default executor: waiting embedding requests must not
    take the threads that chat requests use to render their prompts."""

    def __init__(self, max_waiting: int, name: str):
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args) -> T:
        with self._lock:
            if self._pending > self.max_waiting:
                raise QueueFullError(
                    f"{self._pending} embedding requests are already running or waiting; retry shortly", retry_after=1
                )
            self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def embed_tokens(
    embedder: LlamaCppEmbedder, inputs: list[list[int]], *, truncate: bool, dimensions: int | None
) -> Embeddings:
    """Check, fit, decode and normalise: what `LlamaCppEngine.embed` runs on the worker thread."""
    check_dimensions(dimensions, embedder.n_embd)
    n_vocab = L.llama_vocab_n_tokens(embedder.vocab)
    for i, tokens in enumerate(inputs):
        if not tokens:
            raise BadRequestError(f"input {i} is empty: send at least one token", param="input")
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise BadRequestError(
                f"input {i} holds token id {bad}, outside this model's vocabulary (0 to {n_vocab - 1})",
                param="input",
            )
    fitted = fit_inputs(inputs, embedder.n_ctx, truncate=truncate, keep_last=embedder.keep_last)
    t0 = time.perf_counter_ns()
    raw = embedder.embed(fitted)
    return Embeddings(
        vectors=[normalize(v, dimensions) for v in raw],
        n_tokens=[len(t) for t in fitted],
        n_tokens_in=[len(t) for t in inputs],
        eval_ns=time.perf_counter_ns() - t0,
    )


def check_dimensions(dimensions: int | None, n_embd: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= n_embd:
        raise BadRequestError(
            f"dimensions must be between 1 and {n_embd} (this model's embedding size), got {dimensions}",
            param="dimensions",
        )
