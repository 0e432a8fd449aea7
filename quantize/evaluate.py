"""Measured quality of quantized variants against a reference: KL divergence, perplexity, top token.

Same method and chunking as `llama-perplexity --kl-divergence` (tools/perplexity in llama.cpp), so
the figures can be checked against it:

- the text is tokenized once by the reference model (BOS added when the vocabulary wants one) and cut
  into chunks of `ctx` tokens (the tail that does not fill a chunk is dropped); each chunk starts with
  BOS when the vocabulary adds one; the KV cache is cleared between chunks;
- only the second half of each chunk is scored (the model always has ctx/2 tokens of context):
  the logits at positions ctx/2 .. ctx-2 predict the tokens at ctx/2+1 .. ctx-1;
- KL(reference || variant) is summed over the vocabulary entries whose reference log-probability
  is above -16, as llama.cpp does; perplexity is exp(mean negative log-likelihood).

Memory: the reference runs first, chunk by chunk, and its full-vocabulary log-softmax is spilled
to a temporary file (16-bit codes over the top 16 nats of each row, plus a float32 scale and
minimum: llama.cpp's own --kl-divergence-base layout per row). Each variant then runs chunk by chunk
and reads back only the matching chunk: at most one chunk of the reference is ever in memory.

Logits come from llama.cpp's low-level API: one llama_batch per chunk with the logits flag set only
on the scored half, read with llama_get_logits. Variants are anything with the LogitsModel shape
(GGUF here; an ONNX model can join the same table by implementing it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.errors import BadRequestError, EdgeError, ModelFormatError, NotFoundError

MIN_LOG_PROB = -16.0  # llama.cpp ignores reference probabilities below e^-16 in the KL sum
CODE_MAX = 65535.0  # 16-bit codes for log-probabilities in [max-16, max]
ROW_BLOCK = 32  # rows of logits turned into log-softmax at once (bounds float64 temporaries)
SPEED_PROMPT, SPEED_GEN = 128, 32  # tokens for the prompt and generation speed figures (as llama-bench pp/tg)

# -- evaluation text ---------------------------------------------------------------------------

DEBIAN_GPL3 = Path("/usr/share/common-licenses/GPL-3")
# Fallbacks, in order: license texts shipped inside installed Python distributions (they are on
# every machine that can run edge-quantize). Long ones first: the text must fill >= 2 chunks.
PACKAGE_LICENSES = (
    ("numpy", "LICENSE.txt"),
    ("torch", "LICENSE"),
    ("llama_cpp_python", "LICENSE.md"),
    ("rich", "LICENSE"),
    ("typer", "LICENSE"),
)
DEFAULT_TEXT_CHAIN = (
    "Debian's /usr/share/common-licenses/GPL-3, else the longest license text shipped "
    "by one of the installed packages " + ", ".join(p for p, _ in PACKAGE_LICENSES)
)


@dataclass(frozen=True)
class EvalText:
    path: Path
    origin: str  # "--eval-text", "debian common-licenses", "package <name>"
    sha256: str
    size_bytes: int

    @classmethod
    def from_file(cls, path: Path, origin: str) -> EvalText:
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"evaluation text {path} does not exist: give a UTF-8 text file with --eval-text")
        data = path.read_bytes()
        return cls(path, origin, hashlib.sha256(data).hexdigest(), len(data))

    def read(self) -> bytes:
        """The text as llama-perplexity -f reads it (one trailing newline dropped)."""
        data = self.path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError(f"evaluation text {self.path} is not UTF-8 ({exc}); convert it first") from None
        return data[:-1] if data.endswith(b"\n") else data


def default_eval_text() -> EvalText:
    """A text that ships with the machine or a dependency (see DEFAULT_TEXT_CHAIN)."""
    if DEBIAN_GPL3.is_file():
        return EvalText.from_file(DEBIAN_GPL3, "debian common-licenses (GPL-3)")
    found: list[tuple[int, Path, str]] = []
    for dist_name, file_name in PACKAGE_LICENSES:
        try:
            files = importlib.metadata.distribution(dist_name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == file_name:
                path = Path(f.locate())
                if path.is_file():
                    found.append((path.stat().st_size, path, f"package {dist_name} ({file_name})"))
    if not found:
        raise NotFoundError(
            f"no default evaluation text found (looked for {DEFAULT_TEXT_CHAIN}); give one with --eval-text FILE"
        )
    _, path, origin = max(found, key=lambda x: x[0])
    return EvalText.from_file(path, origin)


# -- models that give logits ---------------------------------------------------------------------


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
            last, pos = self.b._rows[row], pos + 1
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


# -- chunking and the math -----------------------------------------------------------------------


def chunks(tokens: np.ndarray, ctx: int, bos: int | None) -> Iterator[np.ndarray]:
    """Consecutive ctx-token chunks (tail dropped); the first token of each is BOS when given."""
    for i in range(len(tokens) // ctx):
        chunk = tokens[i * ctx : (i + 1) * ctx].copy()  # (ctx,)
        if bos is not None:
            chunk[0] = bos
        yield chunk


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(rows, n_vocab) f32 -> (rows, n_vocab) f64 log-probabilities."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def encode_rows(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, V) log-probs -> header (rows, 2) f32 [scale, min] and codes (rows, V) u16 over [max-16, max]."""
    top = logp.max(axis=1)
    low = np.maximum(logp.min(axis=1), top + MIN_LOG_PROB)
    scale = ((top - low) / CODE_MAX).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    codes = np.where(logp > low[:, None], np.rint((logp - low[:, None]) / safe), 0)
    codes[scale == 0] = 0
    return np.stack([scale, low.astype(np.float32)], axis=1), codes.astype(np.uint16)


def decode_rows(header: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Inverse of encode_rows: (rows, V) f64 log-probs (entries below max-16 come back as the minimum)."""
    return header[:, :1].astype(np.float64) * codes + header[:, 1:2].astype(np.float64)


@dataclass
class Stats:
    """Per-token figures of one variant (or the reference alone), accumulated chunk by chunk."""

    nll: list[np.ndarray] = field(default_factory=list)  # (n,) f64 per chunk
    nll_ref: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)  # (n,) bool

    def add(self, **parts: np.ndarray) -> None:
        for key, value in parts.items():
            getattr(self, key).append(value)

    def summary(self) -> dict:
        nll = np.concatenate(self.nll)
        out = {"tokens": int(nll.size), "ppl": float(np.exp(nll.mean()))}
        if self.kld:
            kld, ref = np.concatenate(self.kld), np.concatenate(self.nll_ref)
            ppl_ref = float(np.exp(ref.mean()))
            out.update(
                kld_mean=float(kld.mean()),
                kld_p99=float(np.percentile(kld, 99)),
                kld_max=float(kld.max()),
                same_top_pct=float(100 * np.concatenate(self.same_top).mean()),
                ppl_ref=ppl_ref,
                ppl_delta_pct=100 * (out["ppl"] / ppl_ref - 1),
            )
        return out


def score_rows(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, V) logits of the scored rows, (n,) targets -> log-probs (n, V) f64, nll (n,), argmax (n,)."""
    logp = log_softmax(logits)
    return logp, -logp[np.arange(len(targets)), targets], logits.argmax(axis=1)


# -- the reference spill -------------------------------------------------------------------------


class ReferenceSpill:
    """The reference's rows on disk, one record per scored token: llama.cpp's 16-bit log-prob codes
    (scale, min, codes) plus the exact nll and argmax. Chunk i is rows [i*rows, (i+1)*rows)."""

    def __init__(self, folder: Path | None, n_vocab: int, rows_per_chunk: int):
        self.n_vocab, self.rows = n_vocab, rows_per_chunk
        self.dtype = np.dtype(
            [("header", np.float32, 2), ("codes", np.uint16, n_vocab), ("nll", np.float64), ("top", np.int32)]
        )  # packed, no padding
        fd, name = tempfile.mkstemp(prefix=".edge-eval-ref-", suffix=".bin", dir=folder)
        os.close(fd)
        self.path = Path(name)

    def append(self, logp: np.ndarray, nll: np.ndarray, top: np.ndarray) -> None:
        rec = np.empty(len(nll), self.dtype)  # (rows,) records
        rec["header"], rec["codes"] = encode_rows(logp)
        rec["nll"], rec["top"] = nll, top
        with open(self.path, "ab") as f:
            rec.tofile(f)

    def read(self, i: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(i * self.rows * self.dtype.itemsize)
            rec = np.fromfile(f, self.dtype, self.rows)
        if len(rec) != self.rows:
            raise EdgeError(f"the reference spill {self.path} is truncated (disk full?)")
        return rec

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def kl_rows(header: np.ndarray, codes: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(ref || variant) per row, over entries whose reference log-prob is above -16 (as llama.cpp)."""
    logp = decode_rows(header, codes)  # (n, V)
    keep = logp > MIN_LOG_PROB
    return np.where(keep, np.exp(logp) * (logp - logq), 0.0).sum(axis=1)


# -- the evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    ctx: int = 512
    n_threads: int | None = None
    speed: bool = True
    max_chunks: int | None = None  # None: every full chunk of the text
    spill_dir: Path | None = None  # where the reference spill goes (default: the system temp folder)

    def __post_init__(self):
        if self.ctx < 16 or self.ctx % 2:
            raise BadRequestError(f"--eval-ctx must be an even number >= 16, got {self.ctx}")


@dataclass
class VariantFigures:
    path: Path
    n_vocab: int
    n_params: int
    figures: dict  # Stats.summary() plus prompt/gen tokens/s
    seconds: float


Progress = Callable[[str, int, int], None]  # (what, done, total)


class Evaluation:
    """One reference pass (spilled), then any number of variants compared against it."""

    def __init__(
        self, reference: Path, text: EvalText, config: EvalConfig = EvalConfig(), progress: Progress | None = None
    ):
        self.reference, self.text, self.config = Path(reference), text, config
        self.progress = progress or (lambda what, done, total: None)
        self.first = config.ctx // 2
        self.spill: ReferenceSpill | None = None
        self.tokens = np.zeros(0, np.int32)
        self.reference_figures: VariantFigures | None = None

    def __enter__(self) -> Evaluation:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.spill:
            self.spill.close()

    def _chunks(self, bos: int | None) -> list[np.ndarray]:
        out = list(chunks(self.tokens, self.config.ctx, bos))
        return out[: self.config.max_chunks] if self.config.max_chunks else out

    def run_reference(self) -> VariantFigures:
        t0 = time.perf_counter()
        model = open_model(self.reference, self.config.ctx, self.config.n_threads)
        try:
            self.tokens = model.tokenize(self.text.read())
            n_chunks = len(self.tokens) // self.config.ctx
            if n_chunks < 1 or len(self.tokens) < 2 * self.config.ctx:
                raise BadRequestError(
                    f"the evaluation text {self.text.path} has {len(self.tokens)} tokens; at least "
                    f"{2 * self.config.ctx} are needed for --eval-ctx {self.config.ctx}: give a longer "
                    "--eval-text or a smaller --eval-ctx"
                )
            self.bos = model.bos if getattr(model, "add_bos", False) else None
            todo = self._chunks(self.bos)
            self.spill = ReferenceSpill(self.config.spill_dir, model.n_vocab, self.config.ctx - 1 - self.first)
            stats = Stats()
            for i, chunk in enumerate(todo):
                logits = model.chunk_logits(chunk, self.first)[:-1]  # (ctx-1-first, V)
                targets = chunk[self.first + 1 :]
                for s in range(0, len(targets), ROW_BLOCK):  # bounded float64 temporaries
                    logp, nll, top = score_rows(logits[s : s + ROW_BLOCK], targets[s : s + ROW_BLOCK])
                    self.spill.append(logp, nll, top)
                    stats.add(nll=nll)
                self.progress("reference", i + 1, len(todo))
            figures = stats.summary() | self._speed(model)
            self.reference_figures = VariantFigures(
                self.reference, model.n_vocab, model.n_params, figures, time.perf_counter() - t0
            )
            return self.reference_figures
        finally:
            model.close()

    def run_variant(self, path: Path, label: str | None = None) -> VariantFigures:
        if self.spill is None:
            self.run_reference()
        assert self.spill is not None
        t0 = time.perf_counter()
        model = open_model(path, self.config.ctx, self.config.n_threads)
        try:
            n_vocab = self.spill.n_vocab
            if model.n_vocab != n_vocab and not (isinstance(model, OnnxModel) and model.n_vocab > n_vocab):
                raise ModelFormatError(
                    f"{path} has {model.n_vocab} tokens in its vocabulary, the reference "
                    f"{self.reference} has {n_vocab}: they are not the same model"
                )
            stats = Stats()
            todo = self._chunks(self.bos)
            for i, chunk in enumerate(todo):
                # an ONNX export may keep rows past the GGUF vocabulary (padding of the HF checkpoint): dropped
                logits = model.chunk_logits(chunk, self.first)[:-1, :n_vocab]  # (ctx-1-first, V)
                self._compare(i, logits, chunk[self.first + 1 :], stats)
                self.progress(label or Path(path).name, i + 1, len(todo))
            figures = stats.summary() | self._speed(model)
            return VariantFigures(Path(path), model.n_vocab, model.n_params, figures, time.perf_counter() - t0)
        finally:
            model.close()

    def _compare(self, i: int, logits: np.ndarray, targets: np.ndarray, stats: Stats) -> None:
        ref = self.spill.read(i)  # (rows,) records: one chunk in memory
        for s in range(0, len(targets), ROW_BLOCK):  # bounded float64 temporaries
            r = ref[s : s + ROW_BLOCK]
            logq, nll, top = score_rows(logits[s : s + ROW_BLOCK], targets[s : s + ROW_BLOCK])
            stats.add(nll=nll, nll_ref=r["nll"], kld=kl_rows(r["header"], r["codes"], logq), same_top=top == r["top"])

    def _speed(self, model: LogitsModel) -> dict:
        if not self.config.speed:
            return {"prompt_tps": None, "gen_tps": None}
        pp, tg = model.speed(self.tokens)
        return {"prompt_tps": pp, "gen_tps": tg}

    @property
    def n_chunks(self) -> int:
        return len(self._chunks(None))


# -- the ladder: reference + variants -> report --------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A file to put in the report: a variant, or the reference."""

    path: Path
    type: str
    format: str = "gguf"
    imatrix: bool = False
    kept: bool = True  # False: temporary, removed after the evaluation
    without_imatrix: Path | None = None  # the same type quantized without the imatrix (temporary)
    fallbacks: tuple = ()  # progress.Fallback: tensors llama.cpp stored in another type


FLOAT_RANK = {"F32": 0, "F16": 1, "BF16": 2, "ONNX:FP32": 3}


def artifact_for(path: Path, **kw) -> Artifact:
    """The report entry of a GGUF file (type from general.file_type) or an ONNX folder (type from its manifest)."""
    path = Path(path)
    if path.is_dir():
        from edge.formats.onnx import read_manifest

        return Artifact(path, str(read_manifest(path).get("type") or path.name), format="onnx", **kw)
    return Artifact(path, gguf_type(path) or path.stem, **kw)


def pick_reference(artifacts: list[Artifact], fallback: Artifact | None) -> Artifact:
    """The highest-precision float artifact (F32 > F16 > BF16), else `fallback` (the intermediate or source)."""
    floats = sorted((a for a in artifacts if a.type.upper() in FLOAT_RANK), key=lambda a: FLOAT_RANK[a.type.upper()])
    if floats:
        return floats[0]
    if fallback is None:
        raise BadRequestError(
            "no reference to compare with: include a float type (f32, f16 or bf16) or give the reference explicitly"
        )
    return fallback


def gguf_type(path: Path) -> str | None:
    """general.file_type of a GGUF file as a type name (Q4_1, F32, ...), without reading tensors."""
    from edge.formats.gguf import read_gguf_meta

    name = read_gguf_meta(Path(path)).quantization.removeprefix("ALL_")
    return name or None


def fits_profiles(path: Path, type_name: str) -> list[str] | None:
    """Hardware profiles whose memory budget holds this GGUF at the profile's default context."""
    from profiles.plan.planner import estimate
    from profiles.plan.shape import shape_from_gguf
    from profiles.plan.types import TYPES
    from profiles.profile import list_profiles

    if type_name.upper() not in TYPES:
        return None
    shape = shape_from_gguf(Path(path))
    return [
        p.name
        for p in list_profiles()
        if estimate(shape, type_name.upper(), min(shape.n_ctx_train, p.runtime.context), p).fits
    ]


def run_ladder(
    name: str,
    folder: Path,
    reference: Artifact,
    variants: list[Artifact],
    text: EvalText,
    config: EvalConfig,
    *,
    source: str = "",
    source_type: str | None = None,
    n_params: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Evaluate every variant against the reference; the report as JSON (report.schema.json)."""
    from .report import Report, Row, source_notes

    def row(a: Artifact, fig: VariantFigures, without: dict | None = None) -> Row:
        onnx = a.path.is_dir()
        size = sum(p.stat().st_size for p in a.path.glob("model.onnx*")) if onnx else a.path.stat().st_size
        return Row(
            a.format,
            a.type,
            a.path,
            size,
            size * 8 / n_params if n_params else None,
            fig.figures,
            imatrix=a.imatrix,
            without_imatrix=without,
            fits=None if onnx else fits_profiles(a.path, a.type),
            kept=a.kept,
            fallbacks=a.fallbacks,
        )

    with Evaluation(reference.path, text, config, progress) as ev:
        ref_fig = ev.run_reference()
        n_params = n_params or ref_fig.n_params
        ref_fig.figures.update(kld_mean=None, kld_p99=None, same_top_pct=None, ppl_delta_pct=None)
        rows = []
        for a in variants:
            fig = ev.run_variant(a.path, a.type)
            without = ev.run_variant(a.without_imatrix, f"{a.type} (no imatrix)").figures if a.without_imatrix else None
            rows.append(row(a, fig, without))
        ref_row = row(reference, ref_fig)
        notes = source_notes(source_type)
        if any(a.imatrix for a in variants):
            notes.append(
                "+imatrix: quantized with an importance matrix computed on the reference; the KLD in "
                "brackets is the same type quantized without it."
            )
        if any(a.format == "onnx" for a in variants) or reference.format == "onnx":
            notes.append(
                "ONNX rows run in onnxruntime through edge's ONNX backend on the same tokens; a folder's "
                "sha256 is that of its edge_onnx.json, which lists the sha256 of every file in it."
            )
        if not reference.kept:
            notes.append(
                f"The reference {reference.path.name} was a temporary intermediate and has been removed "
                "(keep it with --keep-intermediate); its sha256 is listed."
            )
        rep = Report(
            name,
            folder,
            ref_row,
            rows,
            text,
            config.ctx,
            ev.n_chunks,
            int(ref_fig.figures["tokens"]),
            source=source,
            source_type=source_type,
            notes=notes,
        )
        return rep.to_json()


def ladder_hook(
    name: str, folder: Path, source: Path, text: EvalText, config: EvalConfig, box: dict, progress_for=None
):
    """An after-hook for quantize.convert.convert: evaluates the outputs and puts the report in box["report"].

    The types quantized with an importance matrix are also quantized without it (temporary files,
    removed afterwards) so the report shows both figures."""
    from .gguf_out import TMP_PREFIX
    from .quantizer import TYPES, quantize_file

    def after(quantized_from: Path, results: list, matrix, bars) -> None:
        from .progress import llama_log_to

        with llama_log_to(bars, None):
            _after(quantized_from, results, matrix, bars)

    def _after(quantized_from: Path, results: list, matrix, bars) -> None:
        arts = [
            Artifact(
                Path(r.path),
                r.type,
                format="onnx" if r.type.startswith("onnx:") else "gguf",
                imatrix=r.imatrix,
                fallbacks=r.fallbacks,
            )
            for r in results
        ]
        kept = any(Path(r.path) == Path(quantized_from) for r in results) or Path(quantized_from) == Path(source)
        from_type = gguf_type(quantized_from) if Path(quantized_from).is_file() else None
        fallback = Artifact(Path(quantized_from), from_type or "reference", kept=kept)
        reference = pick_reference(arts, fallback)
        temps: list[Path] = []
        try:
            variants = []
            for a in arts:
                if a == reference:
                    continue
                if a.imatrix and not TYPES[a.type].needs_imatrix:
                    tmp = Path(folder) / f"{TMP_PREFIX}noimatrix-{name}-{a.type.lower()}.gguf"
                    temps.append(tmp)
                    quantize_file(
                        Path(quantized_from), tmp, TYPES[a.type], force=True, allow_requantize=Path(source).is_file()
                    )
                    a = replace(a, without_imatrix=tmp)
                variants.append(a)
            progress = progress_for(bars) if progress_for else None
            box["report"] = run_ladder(
                name,
                Path(folder),
                reference,
                variants,
                text,
                config,
                source=str(source),
                source_type=gguf_type(source) if Path(source).is_file() else None,
                progress=progress,
            )
        finally:
            for tmp in temps:
                tmp.unlink(missing_ok=True)

    return after
