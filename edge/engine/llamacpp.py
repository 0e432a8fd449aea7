"""The GGUF backend on llama-cpp-python's LOW-LEVEL API (llama_cpp.llama_cpp, ctypes).

Why not the high-level `Llama` class: it copies logits into numpy per token and serializes
requests. This backend keeps Python out of the per-token path:
one `llama_decode` per step for all slots (sequence id = slot), native sampler chains
(`llama_sampler_sample` reads the logits row inside llama.cpp), token pieces cached as bytes.

`LlamaCppBatcher` holds the native objects and implements `edge.engine.scheduler.Batcher`;
`LlamaCppEngine` joins it to a `Scheduler` behind the `Engine` contract.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
from pathlib import Path

from edge.engine.base import Adapter, Embeddings, ModelInfo, SamplingParams
from edge.engine.scheduler import GenerationStream, Scheduler, SchedulerEngine
from edge.engine.speculative import SpecConfig
from edge.errors import BadRequestError, DoesNotFitError, EdgeError, ModelFormatError
from edge.formats.validate import validate_gguf_adapter
from edge.lightimport import llama_module

L = llama_module("llama_cpp")  # the ctypes API only, not the high-level package (see edge.lightimport)

DEFAULT_CTX_CAP = 4096  # per slot when the caller gives none (the model's own may be 128k)
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5
META_SKIP_PREFIXES = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.chat_template",
)
META_MAX_VALUE = 512  # characters of one metadata value kept for /api/show

_init_lock = threading.Lock()
_initialized = False
_last_log_level = 0
_VERBOSE = os.environ.get("EDGE_LLAMA_LOG", "") not in ("", "0")  # 1: show all of llama.cpp's log


@L.llama_log_callback
def _quiet_log(level: int, text: bytes, _user_data) -> None:
    """Drop llama.cpp's chatter, keep its errors (on stderr); EDGE_LLAMA_LOG=1 keeps everything."""
    global _last_log_level
    if level != GGML_LOG_LEVEL_CONT:
        _last_log_level = level
    if (_VERBOSE or _last_log_level == GGML_LOG_LEVEL_ERROR) and text:
        sys.stderr.write("llama.cpp: " + text.decode("utf-8", "replace"))


def _init_backend() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            L.llama_log_set(_quiet_log, ctypes.c_void_p(0))
            L.llama_backend_init()
            _initialized = True


def _native_no_op_log():
    """A C function usable as llama.cpp's log callback that does nothing, or None.

    Loading a model and creating its context log ~2,300 lines, nearly all debug chatter that
    `_quiet_log` drops. Each line through a ctypes callback must take the GIL from the thread importing
    the HTTP stack meanwhile, so the load stalls line after line. libc's `abs` reads only its first argument (the
    level, an int) and has no side effect; the C calling conventions llama.cpp runs on (x86-64 System V
    and Windows, AArch64, 32-bit ARM) leave the trailing arguments to the caller, so it serves as a
    native no-op without a compiler."""
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        return L.llama_log_callback(ctypes.cast(libc.abs, ctypes.c_void_p).value)
    except (OSError, AttributeError, TypeError):
        return None


_NO_OP_LOG = None if _VERBOSE else _native_no_op_log()
_muted: list = []  # while loads run with the log off: [(callback, user data) to restore] (under _init_lock)


@contextlib.contextmanager
def _log_muted():
    """llama.cpp's log off while a model loads and its context is made (see _native_no_op_log). The log
    is process-wide: it stays off until the last of concurrent loads ends, then the callback that was
    set before (ours, or quantize.progress's) is set again."""
    if _NO_OP_LOG is None:
        yield
        return
    with _init_lock:
        if not _muted:
            before = (L.llama_log_callback(), ctypes.c_void_p())
            L.llama_log_get(ctypes.byref(before[0]), ctypes.byref(before[1]))
            _muted.append(before)
            L.llama_log_set(_NO_OP_LOG, ctypes.c_void_p(0))
        else:
            _muted.append(_muted[0])
    try:
        yield
    finally:
        with _init_lock:
            callback, user_data = _muted.pop()
            if not _muted:
                L.llama_log_set(callback, user_data)


def _logged_if_null(call):
    """`call()`; when it returns NULL while the log is off, once more with the log on, so llama.cpp's
    own error lines reach stderr before we raise."""
    result = call()
    if result:
        return result
    with _init_lock:
        if not _muted:
            return result
        L.llama_log_set(*_muted[0])
        try:
            return call()
        finally:
            L.llama_log_set(_NO_OP_LOG, ctypes.c_void_p(0))


def default_threads() -> int:
    try:
        from profiles.cpu import physical_cores

        return max(1, int(physical_cores()))
    except (ImportError, AttributeError):
        return os.cpu_count() or 1


def quantization_name(ftype: int) -> str:
    """llama.cpp's file-type name as Ollama spells it: "Q4_K - Medium" -> "Q4_K_M"."""
    raw = L.llama_ftype_name(ftype)
    name = raw.decode() if raw else f"ftype_{ftype}"
    for long, short in ((" - Small", "_S"), (" - Medium", "_M"), (" - Large", "_L"), (" - Extra Small", "_XS")):
        name = name.replace(long, short)
    return name.replace(" ", "_")


def _penalized(p: SamplingParams) -> bool:
    return p.repeat_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


class LlamaCppBatcher:
    """Model + context + one llama_batch: the native half of a GGUF engine (decode thread only,
    except make_sampler/free_sampler/piece/is_eog/tokenize, which touch only the vocabulary)."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int | None,
        n_parallel: int,
        n_threads: int,
        n_threads_batch: int,
        n_batch: int = 512,
        kv_unified: bool = False,
        flash_attn: int = -1,
        use_mmap: bool = True,
        draft_max: int = 0,
    ):
        """`draft_max` > 0: each slot may verify that many drafted tokens per decode (logits rows reserved
        for them); 0 on architectures whose KV cache cannot drop a sequence's last positions."""
        _init_backend()
        if n_parallel < 1:
            raise BadRequestError(f"n_parallel must be >= 1, got {n_parallel}")
        self.path = path
        with _log_muted():  # ~2,300 lines of debug chatter
            self.model = self._load_model(path, use_mmap)
            self.vocab = L.llama_model_get_vocab(self.model)
            n_ctx_train = L.llama_model_n_ctx_train(self.model)
            per_slot = n_ctx or min(n_ctx_train, DEFAULT_CTX_CAP)
            # recurrent state cannot be rewound to an earlier position: no drafts to reject
            rewindable = not (L.llama_model_is_recurrent(self.model) or L.llama_model_is_hybrid(self.model))
            self.draft_max = max(0, draft_max) if rewindable else 0
            self.ctx = self._new_context(
                per_slot, n_parallel, n_threads, n_threads_batch, n_batch, kv_unified, flash_attn, 1 + self.draft_max
            )
            self.mem = L.llama_get_memory(self.ctx)
            self.n_slots = n_parallel
            self.n_ctx = L.llama_n_ctx_seq(self.ctx) if not kv_unified else per_slot
            self.n_batch = L.llama_n_batch(self.ctx)
            self.n_swa = L.llama_model_n_swa(self.model)
            self.batch = L.llama_batch_init(self.n_batch, 0, 1)  # token/pos/seq_id/logits arrays of n_batch
            self._pieces: dict[int, bytes] = {}
            self._display: dict[int, bytes] = {}  # pieces with control tokens by name (logprob alternatives)
            self._piece_buf = ctypes.create_string_buffer(256)
            self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
            self._argmax = _Argmax(self.n_vocab) if self.n_vocab >= FAST_GREEDY_MIN_VOCAB else None
            self._loras: dict[str, object] = {}  # adapter path -> llama_adapter_lora (freed with the model)
            self._lora_on: Adapter | None = None  # what the context applies now

    def warm_up(self) -> None:
        """One decode of one token, then the KV cache emptied, as llama-server does when it loads: the
        first decode of a context faults in every page of the memory-mapped weights and sets up the
        compute graph (longer than evaluating a whole short prompt), so it happens before the first
        request.

        The scheduler calls it on the decode thread, the only thread that runs this context's graphs.
        ggml's OpenMP (libgomp) keeps a pool of worker threads per thread that starts parallel work;
        a pool left behind in the loader's thread (a long-lived executor thread) counts as busy, and
        libgomp then sees more threads than CPUs and stops spinning at barriers: every op's barrier
        becomes a futex sleep and wake, which on 2 cores costs more than the small model's matmuls."""
        bos = L.llama_vocab_bos(self.vocab)
        with _log_muted():  # the graph reserve's debug lines
            L.llama_set_warmup(self.ctx, True)
            try:
                self.decode([(0, [bos if bos >= 0 else 0], 0, 1)])
            finally:
                L.llama_set_warmup(self.ctx, False)
                L.llama_memory_clear(self.mem, True)

    # ---- loading ------------------------------------------------------------------------------
    @staticmethod
    def _load_model(path: Path, use_mmap: bool):
        params = L.llama_model_default_params()
        params.use_mmap = use_mmap
        model = _logged_if_null(lambda: L.llama_model_load_from_file(str(path).encode(), params))
        if not model:
            raise ModelFormatError(
                f"llama.cpp could not load {path}: the file is not a GGUF model this llama.cpp supports "
                "(truncated, another format, or an unknown architecture); re-convert it with edge-quantize"
            )
        return model

    def _new_context(
        self, per_slot, n_parallel, n_threads, n_threads_batch, n_batch, kv_unified, flash_attn, outputs_per_slot
    ):
        params = L.llama_context_default_params()
        params.n_ctx = per_slot * n_parallel  # non-unified KV: every sequence gets n_ctx / n_seq_max
        params.n_batch = params.n_ubatch = max(n_batch, n_parallel * outputs_per_slot)
        params.n_seq_max = n_parallel
        # we read one logits row per slot per batch, plus one per drafted token: reserving n_batch rows
        # (the default) costs a ~100 MB compute buffer for a 49k vocabulary
        params.n_outputs_max = n_parallel * outputs_per_slot
        params.n_threads, params.n_threads_batch = n_threads, n_threads_batch
        params.kv_unified = kv_unified
        params.flash_attn_type = flash_attn
        params.no_perf = True
        ctx = _logged_if_null(lambda: L.llama_init_from_model(self.model, params))
        if not ctx:
            L.llama_model_free(self.model)
            raise DoesNotFitError(
                f"llama.cpp could not create a context of {per_slot} tokens x {n_parallel} slots; "
                "lower --ctx or --parallel"
            )
        return ctx

    def model_info(self, name: str) -> ModelInfo:
        meta = self._metadata()
        template = L.llama_model_chat_template(self.model, None)
        return ModelInfo(
            name=name,
            path=str(self.path),
            format="gguf",
            family=meta.get("general.architecture", "unknown"),
            parameter_count=L.llama_model_n_params(self.model),
            quantization=quantization_name(L.llama_model_ftype(self.model)),
            size_bytes=L.llama_model_size(self.model),
            n_ctx_train=L.llama_model_n_ctx_train(self.model),
            n_ctx=self.n_ctx,
            chat_template=template.decode("utf-8", "replace") if template else None,
            bos_token=self._token_text(L.llama_vocab_bos(self.vocab)),
            eos_token=self._token_text(L.llama_vocab_eos(self.vocab)),
            add_bos=bool(L.llama_vocab_get_add_bos(self.vocab)),
            metadata=meta,
        )

    def _metadata(self) -> dict[str, str]:
        out = {}
        buf = ctypes.create_string_buffer(META_MAX_VALUE * 4 + 1)
        for i in range(L.llama_model_meta_count(self.model)):
            L.llama_model_meta_key_by_index(self.model, i, buf, len(buf))
            key = buf.value.decode("utf-8", "replace")
            if key.startswith(META_SKIP_PREFIXES):
                continue
            L.llama_model_meta_val_str_by_index(self.model, i, buf, len(buf))
            out[key] = buf.value.decode("utf-8", "replace")[:META_MAX_VALUE]
        return out

    def _token_text(self, token: int) -> str | None:
        if token < 0:
            return None
        text = L.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", "replace") if text else None

    # ---- vocabulary (any thread) -----------------------------------------------------------
    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        for _ in range(2):
            out = (L.llama_token * cap)()  # (cap,) token ids
            n = L.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
            if n >= 0:
                return list(out[:n])
            cap = -n
        raise BadRequestError("could not tokenize the text")

    def detokenize(self, tokens: list[int]) -> str:
        arr = (L.llama_token * len(tokens))(*tokens)
        cap = max(64, 8 * len(tokens))
        for _ in range(2):
            buf = ctypes.create_string_buffer(cap)
            n = L.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            cap = -n
        raise BadRequestError("could not detokenize the tokens")

    def piece(self, token: int) -> bytes:
        got = self._pieces.get(token)
        if got is None:
            got = self._pieces[token] = self._to_piece(token, False)
        return got

    def display_piece(self, token: int) -> bytes:
        got = self._display.get(token)
        if got is None:
            got = self._display[token] = self._to_piece(token, True)
        return got

    def _to_piece(self, token: int, special: bool) -> bytes:
        n = L.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n >= 0:
            return self._piece_buf.raw[:n]
        buf = ctypes.create_string_buffer(-n)
        n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return L.llama_vocab_is_eog(self.vocab, token)

    # ---- samplers ---------------------------------------------------------------------------
    def make_sampler(self, p: SamplingParams) -> NativeSampler:
        grammar = None
        if p.grammar:
            grammar = self._grammar(p)
            if not grammar:
                raise BadRequestError("the grammar does not parse (GBNF with a `root` rule expected)", param="grammar")
        guarded = self._chain(p, grammar) if grammar else None
        plain_greedy = p.temperature <= 0 and not grammar and not _penalized(p)
        return NativeSampler(
            self._chain(p, None),
            guarded,
            grammar,
            penalized=_penalized(p),
            argmax=self._argmax if plain_greedy else None,
        )

    def _grammar(self, p: SamplingParams):
        assert p.grammar is not None
        text = p.grammar.encode("utf-8")
        if not (p.grammar_triggers or p.grammar_trigger_tokens):
            return L.llama_sampler_init_grammar(self.vocab, text, b"root")
        patterns = (ctypes.c_char_p * len(p.grammar_triggers))(*(t.encode("utf-8") for t in p.grammar_triggers))
        tokens = (L.llama_token * len(p.grammar_trigger_tokens))(*p.grammar_trigger_tokens)
        return L.llama_sampler_init_grammar_lazy_patterns(
            self.vocab, text, b"root", patterns, len(p.grammar_triggers), tokens, len(p.grammar_trigger_tokens)
        )

    def _chain(self, p: SamplingParams, grammar):
        """A native chain: [grammar] [penalties] then greedy, or top_k/top_p/min_p/temp/dist."""
        cparams = L.llama_sampler_chain_default_params()
        cparams.no_perf = True
        chain = L.llama_sampler_chain_init(cparams)
        add = lambda s: L.llama_sampler_chain_add(chain, s)  # noqa: E731  the chain owns what it gets
        if grammar:
            add(grammar)
        if _penalized(p):
            add(
                L.llama_sampler_init_penalties(
                    L.llama_vocab_n_tokens(self.vocab),
                    p.repeat_last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            )
        if p.temperature <= 0:
            add(L.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            add(L.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(L.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            add(L.llama_sampler_init_min_p(p.min_p, 1))
        add(L.llama_sampler_init_temp(p.temperature))
        seed = L.LLAMA_DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF
        add(L.llama_sampler_init_dist(seed))
        return chain

    def free_sampler(self, sampler: NativeSampler) -> None:
        sampler.free()

    def sample(self, sampler: NativeSampler, row: int) -> int:
        return sampler.sample(self.ctx, row)

    def logits_row(self, row: int):
        """(n_vocab,) float32: llama.cpp's logits of a batch row, viewed in place (valid until the next decode)."""
        import numpy as np  # requests with logprobs only

        return np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))

    # ---- KV cache and decoding (decode thread) -----------------------------------------------
    def keep_prefix(self, seq: int, n_keep: int) -> int:
        if n_keep > 0 and self.n_swa > 0:
            pos_min = L.llama_memory_seq_pos_min(self.mem, seq)
            if pos_min > 0 and pos_min >= n_keep - self.n_swa:  # the sliding window dropped what we need
                n_keep = 0
        if n_keep > 0 and L.llama_memory_seq_rm(self.mem, seq, n_keep, -1):
            return n_keep
        L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        return 0

    def discard(self, seq: int, pos: int) -> None:
        """Drop sequence `seq`'s KV from position `pos` on (rejected draft tokens)."""
        if not L.llama_memory_seq_rm(self.mem, seq, pos, -1):
            raise EdgeError(f"llama.cpp could not drop positions {pos}.. of sequence {seq}")

    def save_state(self, seq: int) -> bytearray:
        """A copy of sequence `seq`'s KV state (llama.cpp's own serialization, SWA cache included)."""
        size = L.llama_state_seq_get_size(self.ctx, seq)
        state = bytearray(size)
        if size == 0:
            return state
        got = L.llama_state_seq_get_data(self.ctx, (ctypes.c_uint8 * size).from_buffer(state), size, seq)
        del state[got:]
        return state

    def load_state(self, seq: int, state: bytes | bytearray) -> bool:
        """Replace sequence `seq`'s KV with a saved state; False (and the sequence empty) if llama.cpp
        refuses it (a state of another model or context layout)."""
        L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        buf = state if isinstance(state, bytearray) else bytearray(state)
        arr = (ctypes.c_uint8 * len(buf)).from_buffer(buf)
        if L.llama_state_seq_set_data(self.ctx, arr, len(buf), seq) > 0:
            return True
        L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        return False

    def decode(self, entries: list[tuple[int, list[int], int, int]]) -> list[int]:
        """Decode (seq, tokens, first position, n_out) entries in one batch: logits of the last n_out tokens
        of each entry (0, 1, or 1 + the drafted tokens it verifies).

        Returns the batch rows whose logits were requested, in entry order.
        """
        b = self.batch
        rows = []
        n = 0
        for seq, tokens, pos0, n_out in entries:
            first_out = len(tokens) - n_out
            for j, tok in enumerate(tokens):
                b.token[n] = tok
                b.pos[n] = pos0 + j
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                if j >= first_out:
                    b.logits[n] = 1
                    rows.append(n)
                else:
                    b.logits[n] = 0
                n += 1
        b.n_tokens = n
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise EdgeError(f"llama_decode failed with code {rc} on a batch of {n} tokens")
        return rows

    def set_adapter(self, adapter: Adapter | None) -> None:
        """Apply `adapter` (None: none) to the context from the next decode on (decode thread). The file
        was checked by validate_gguf_adapter against this model when the request came in."""
        if adapter == self._lora_on:
            return
        if adapter is None:
            rc = L.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            lora = self._loras.get(adapter.path)
            if lora is None:
                lora = L.llama_adapter_lora_init(self.model, adapter.path.encode())
                if not lora:
                    raise ModelFormatError(f"llama.cpp could not load the LoRA adapter {adapter.path}")
                self._loras[adapter.path] = lora
            loras = (L.llama_adapter_lora_p_ctypes * 1)(lora)
            rc = L.llama_set_adapters_lora(self.ctx, loras, 1, (ctypes.c_float * 1)(adapter.scale))
        if rc != 0:
            raise EdgeError(f"llama_set_adapters_lora failed with code {rc}")
        self._lora_on = adapter

    def free(self) -> None:
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            L.llama_model_free(self.model)
            self.ctx = self.model = None


# llama_sampler_sample copies every logit into a candidate array before the greedy sampler scans it:
# ~1 ms a token for Gemma-3's 262k vocabulary on a 2-core VM, 4 % of a 270M model's token time (and
# llama-server pays it too). numpy's argmax over the logits in place takes ~0.05 ms. Below this size
# the native path costs little and numpy's import (~0.1 s) would only lengthen the cold start.
FAST_GREEDY_MIN_VOCAB = 100_000


class _Argmax:
    """Greedy without the candidate copy: argmax over llama.cpp's logits row, viewed in place (no copy into
    Python). Picks what llama.cpp's greedy sampler picks: the highest logit, the lowest id on a tie."""

    def __init__(self, n_vocab: int):
        import numpy as np  # only for large vocabularies; see FAST_GREEDY_MIN_VOCAB

        self._as_array, self._shape = np.ctypeslib.as_array, (n_vocab,)

    def __call__(self, ctx, row: int) -> int:
        return int(self._as_array(L.llama_get_logits_ith(ctx, row), shape=self._shape).argmax())


class NativeSampler:
    """A sampler chain, plus grammar-based rejection sampling when a grammar is set.

    Applying a grammar to all ~50k candidates costs more than the forward pass of a small model, so
    (like llama-server) the token is first sampled without the grammar and only checked against it;
    only when the grammar rejects it is the step resampled through `guarded` = [grammar, same chain].
    Exact for greedy (the argmax, when allowed, is the constrained argmax). With repetition
    penalties the penalty history must see exactly the accepted tokens, so the guarded chain is
    used for every token then.
    """

    def __init__(self, chain, guarded=None, grammar=None, *, penalized: bool = False, argmax=None):
        self.chain, self.guarded, self.grammar = chain, guarded, grammar  # grammar is owned by guarded
        self.penalized = penalized
        self.argmax = argmax  # plain greedy on a large vocabulary: see _Argmax
        self._one = (L.llama_token_data * 1)()  # (1,) candidate checked against the grammar
        self._one_arr = L.llama_token_data_array(self._one, 1, -1, False)

    def sample(self, ctx, row: int) -> int:
        if self.argmax is not None:
            return self.argmax(ctx, row)
        if self.guarded is None:
            return L.llama_sampler_sample(self.chain, ctx, row)
        if self.penalized:
            return L.llama_sampler_sample(self.guarded, ctx, row)
        token = L.llama_sampler_sample(self.chain, ctx, row)
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._one_arr.size, self._one_arr.selected = 1, -1
        L.llama_sampler_apply(self.grammar, ctypes.byref(self._one_arr))
        if self._one[0].logit != float("-inf"):
            L.llama_sampler_accept(self.grammar, token)
            return token
        return L.llama_sampler_sample(self.guarded, ctx, row)  # accepts into the grammar too

    def free(self) -> None:
        for chain in (self.chain, self.guarded):
            if chain:
                L.llama_sampler_free(chain)
        self.chain = self.guarded = self.grammar = None


def file_digest(path: Path) -> str:
    """sha256 of a model file, remembered while the file is unchanged (edge.formats.filecache)."""
    from edge.formats.filecache import remember
    from edge.fsio import sha256_file

    return remember(path, "sha256", lambda: sha256_file(path))


class LlamaCppEngine(SchedulerEngine):
    """A GGUF model served by llama.cpp with N batched slots."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        n_ctx: int | None = None,
        n_parallel: int = 1,
        n_threads: int | None = None,
        queue_size: int = 16,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
        kv_unified: bool = False,
        flash_attn: int = -1,
        use_mmap: bool = True,
        cache_ram_bytes: int = 0,
        cache_dir: Path | None = None,
        spec: SpecConfig | None = None,
        embed_exact: bool = False,
    ):
        """`cache_ram_bytes` > 0 keeps earlier prompts' KV states in memory (and under `cache_dir`, keyed by
        this file's sha256, across restarts): see edge.engine.prompt_cache. `spec`: prompt-lookup
        speculation (edge.engine.speculative). `embed_exact`: the same embedding alone or in any batch
        (edge.engine.embed)."""
        t0 = time.perf_counter_ns()
        threads = n_threads or default_threads()
        self._batcher = LlamaCppBatcher(
            Path(path),
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_threads=threads,
            n_threads_batch=n_threads_batch or threads,
            n_batch=n_batch,
            kv_unified=kv_unified,
            flash_attn=flash_attn,
            use_mmap=use_mmap,
            draft_max=spec.draft_max if spec is not None else 0,
        )
        self.info = self._batcher.model_info(name)
        self.n_threads = threads
        self.embed_exact = embed_exact
        cache = None
        if cache_ram_bytes > 0:
            from edge.engine.prompt_cache import PromptCache

            model = Path(path)
            cache = PromptCache(cache_ram_bytes, directory=cache_dir, model_digest=lambda: file_digest(model))
        self.scheduler = Scheduler(
            self._batcher, queue_size=queue_size, name=f"edge-decode-{name}", prompt_cache=cache, spec=spec
        )
        self.load_ns = time.perf_counter_ns() - t0
        self._closed = False
        self._checked: set[tuple[str, int]] = set()  # adapter files validated (path, mtime)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._batcher.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self._batcher.detokenize(tokens)

    # ---- embeddings (edge.engine.embed): a context and a thread of their own, made at the first request
    _embedder = None  # LlamaCppEmbedder, on the worker's thread only
    _embed_worker = None  # EmbedWorker

    def generate(self, prompt: list[int], params: SamplingParams, *, stream: bool = True) -> GenerationStream:
        if self.info.is_encoder:
            raise BadRequestError(
                f"{self.info.name} is an embedding model ({self.info.family}, bidirectional attention): it cannot "
                "chat or complete text; send its inputs to /v1/embeddings or /api/embed",
                param="model",
            )
        if params.adapter is not None:
            self._check_adapter(params.adapter)
        return super().generate(prompt, params, stream=stream)

    def _check_adapter(self, adapter: Adapter) -> None:
        """A LoRA file is untrusted input: the bounded validator, against this model, before llama.cpp reads it."""
        path = Path(adapter.path)
        try:
            key = (adapter.path, path.stat().st_mtime_ns)
        except OSError:
            raise ModelFormatError(f"the LoRA adapter {path.name} is gone") from None
        if key not in self._checked:
            validate_gguf_adapter(path, self._batcher.path)
            self._checked.add(key)

    async def embed(
        self, inputs: list[list[int]], *, truncate: bool = True, dimensions: int | None = None
    ) -> Embeddings:
        from edge.engine.embed import EmbedWorker

        if self._closed:
            raise EdgeError("this engine is closed")
        if self._embed_worker is None:  # the event loop's thread: no race
            self._embed_worker = EmbedWorker(self.scheduler.queue_size, f"edge-embed-{self.info.name}")
        return await self._embed_worker.run(self._embed_now, inputs, truncate, dimensions)

    def _embed_now(self, inputs: list[list[int]], truncate: bool, dimensions: int | None) -> Embeddings:
        from edge.engine.embed import LlamaCppEmbedder, embed_tokens

        if self._embedder is None:
            info = self.info
            self._embedder = LlamaCppEmbedder(
                self._batcher.model,
                arch=info.metadata.get("general.architecture", info.family),
                metadata=info.metadata,
                encoder=info.is_encoder,
                n_ctx=info.n_ctx_train if info.is_encoder else min(info.n_ctx_train, info.n_ctx),
                n_threads=self.n_threads,
                exact=self.embed_exact,
            )
        return embed_tokens(self._embedder, inputs, truncate=truncate, dimensions=dimensions)

    def _close_embedder(self) -> None:
        if self._embed_worker is not None:
            self._embed_worker.close()  # waits for a running call
        if self._embedder is not None:
            self._embedder.free()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_embedder()  # before the model it shares is freed
        if self.scheduler.close():
            self._batcher.free()
        else:  # freeing the context under a decode that never returned would crash the process
            sys.stderr.write("edge: the decode thread did not stop; leaving the llama.cpp context allocated\n")
