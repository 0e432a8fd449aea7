"""The ONNX backend: onnxruntime on folders written by `edge-quantize convert --to onnx:*`.

The graph (quantize/onnx/decoder.py) uses GroupQueryAttention with its KV cache shared in place:
every slot owns preallocated (1, n_kv, n_ctx, head_dim) key/value buffers, bound through IO binding
as both `past_key_values.i.*` and `present.i.*`, so a step writes only the new rows and nothing is
copied. The decode-step inputs (the token, the attention mask: a view of one preallocated row of
ones) and the logits row are small preallocated buffers updated in place; Python per token is one
`run_with_iobinding` and the sampler.

Folders exported by optimum (`edge-quantize convert` uses it for architectures our graph builder
lacks; the manifest's `kv_cache` is "concat") have the Hugging Face interface instead: attention
mask, position_ids, and a present cache one step longer than the past. `ConcatBatcher` runs them:
each slot keeps its cache as numpy arrays and feeds each step's present back as the next past.

`OnnxBatcher` implements edge.engine.scheduler.Batcher (slots run one after another in a step; each
slot's prefix cache is just its buffer, `keep_prefix` only moves the length); `OnnxEngine` joins it
to the shared Scheduler behind the Engine contract. Execution providers come from the caller
(`providers=`, e.g. from the hardware profile: CUDA/TensorRT on Jetson, CoreML on Apple,
NNAPI/QNN on Android); the CPU provider is the default and the one tested.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from edge.engine.base import ModelInfo, SamplingParams
from edge.engine.onnx.sampling import NumpySampler
from edge.engine.onnx.vocab import Vocab
from edge.engine.scheduler import Scheduler, SchedulerEngine
from edge.errors import BadRequestError, DependencyMissingError, EdgeError, ModelFormatError

DEFAULT_CTX_CAP = 4096  # per slot when the caller gives none
MODEL_FILE = "model.onnx"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise DependencyMissingError("serving an ONNX model needs onnxruntime: pip install 'edge-llm[onnx]'") from None
    return onnxruntime


def default_threads() -> int:
    try:
        from profiles.cpu import physical_cores

        return max(1, int(physical_cores()))
    except (ImportError, AttributeError):
        return os.cpu_count() or 1


class _SlotIO:
    """One slot's IO binding: its KV buffers bound as past and present, its logits buffer."""

    def __init__(self, sess, ort, n_layers: int, kv_shape: tuple[int, ...], vocab: int):
        self.binding = sess.io_binding()
        self.kv = []  # numpy buffers, kept alive with their OrtValues
        for i in range(n_layers):
            for kind in ("key", "value"):
                buf = np.zeros(kv_shape, dtype=np.float32)  # (1, n_kv, n_ctx, head_dim)
                ov = ort.OrtValue.ortvalue_from_numpy(buf)
                self.binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", ov)
                self.binding.bind_ortvalue_output(f"present.{i}.{kind}", ov)
                self.kv.append((buf, ov))
        self.logits1 = np.zeros((1, 1, vocab), dtype=np.float32)  # (1, 1, vocab) the decode step's row
        self.logits1_ov = ort.OrtValue.ortvalue_from_numpy(self.logits1)


class OnnxBatcher:
    def __init__(
        self,
        folder: Path,
        *,
        n_ctx: int | None,
        n_parallel: int,
        n_threads: int,
        providers: tuple[str, ...] | list[str] | None = None,
    ):
        from edge.formats.onnx import read_manifest
        from edge.formats.validate import validate_onnx_folder

        if n_parallel < 1:
            raise BadRequestError(f"n_parallel must be >= 1, got {n_parallel}")
        self.folder = Path(folder)
        validate_onnx_folder(self.folder)  # external data stays inside the folder
        self.manifest = read_manifest(self.folder)  # sizes as exported (truncated copies refused)
        m = self.manifest["model"]
        self.m = m
        self.ort = ort = _ort()
        self.vocab = Vocab(self.folder, list(m.get("eos_token_ids") or []))
        self.n_slots = n_parallel
        limit = int(m["max_positions"])
        self.n_ctx = min(int(n_ctx or min(int(m.get("context_length") or limit), DEFAULT_CTX_CAP)), limit)
        self.n_batch = 512
        self.sess = self._session(n_threads, providers)
        self.n_vocab = int(m["vocab_size"])
        self.slots = self._make_slots(n_parallel)
        # decode-step inputs shared by all slots (steps run one slot at a time)
        self.ids1 = np.zeros((1, 1), dtype=np.int64)  # (1, 1) the token
        self.ones = np.ones((1, self.n_ctx), dtype=np.int64)  # (1, n_ctx) masks are views of its prefix
        self._ids1_ov = ort.OrtValue.ortvalue_from_numpy(self.ids1)
        self._rows: list[np.ndarray] = []

    def _make_slots(self, n_parallel: int) -> list:
        m = self.m
        kv_shape = (1, int(m["n_kv_heads"]), self.n_ctx, int(m["head_dim"]))
        return [_SlotIO(self.sess, self.ort, int(m["n_layers"]), kv_shape, self.n_vocab) for _ in range(n_parallel)]

    def _mask(self, total: int):
        """The (1, total) mask of ones as an OrtValue on the preallocated row (kept alive by `ones`)."""
        return self.ort.OrtValue.ortvalue_from_numpy(self.ones[:, :total])

    def _session(self, n_threads: int, providers):
        ort = self.ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = n_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(self.folder / MODEL_FILE), so, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise ModelFormatError(
                f"onnxruntime could not load {self.folder / MODEL_FILE}: {exc}; "
                "re-export the folder with edge-quantize convert"
            ) from None

    def model_info(self, name: str) -> ModelInfo:
        m = self.m
        size = sum(p.stat().st_size for p in self.folder.glob("model.onnx*"))
        return ModelInfo(
            name=name,
            path=str(self.folder),
            format="onnx",
            family=str(m.get("model_type") or "unknown"),
            parameter_count=int(m.get("parameter_count") or 0),
            quantization=str(self.manifest.get("type", "onnx")).removeprefix("onnx:").upper(),
            size_bytes=size,
            n_ctx_train=int(m.get("context_length") or self.n_ctx),
            n_ctx=self.n_ctx,
            chat_template=self.vocab.chat_template(self.folder),
            bos_token=self.vocab.bos_token,
            eos_token=self.vocab.eos_token,
            add_bos=self.vocab.add_bos,
            metadata={"onnx.type": str(self.manifest.get("type")), "general.architecture": str(m.get("model_type"))},
        )

    # ---- vocabulary and sampling (any thread) -------------------------------------------------
    def make_sampler(self, params: SamplingParams) -> NumpySampler:
        return NumpySampler(params)

    def free_sampler(self, sampler: NumpySampler) -> None:
        pass

    def piece(self, token: int) -> bytes:
        return self.vocab.piece(token)

    def is_eog(self, token: int) -> bool:
        return token in self.vocab.eog

    def display_piece(self, token: int) -> bytes:
        return self.vocab.display_piece(token)

    # ---- KV cache and decoding (decode thread) --------------------------------------------------
    def keep_prefix(self, seq: int, n_keep: int) -> int:
        return max(0, n_keep)  # rows past n_keep are overwritten by the next step; seqlens_k bounds attention

    def decode(self, entries: list[tuple[int, list[int], int, int]]) -> list[int]:
        self._rows = []
        rows = []
        for seq, tokens, pos0, want in entries:
            row = self._run(self.slots[seq], tokens, pos0)
            if want:
                rows.append(len(self._rows))
                self._rows.append(row)
        return rows

    def _run(self, slot: _SlotIO, tokens: list[int], pos0: int) -> np.ndarray:
        n = len(tokens)
        if pos0 + n > self.n_ctx:
            raise EdgeError(f"the slot's context of {self.n_ctx} tokens is full")
        b = slot.binding
        mask = self._mask(pos0 + n)
        b.bind_ortvalue_input("attention_mask", mask)
        if n == 1:
            self.ids1[0, 0] = tokens[0]
            b.bind_ortvalue_input("input_ids", self._ids1_ov)
            b.bind_ortvalue_output("logits", slot.logits1_ov)
            self.sess.run_with_iobinding(b)
            return slot.logits1[0, 0]
        return self._run_chunk(slot, tokens)[-1]

    def _run_chunk(self, slot: _SlotIO, tokens: list[int]) -> np.ndarray:
        """(n, vocab) logits of a chunk; the mask is bound already."""
        ids = np.asarray(tokens, dtype=np.int64)[None, :]  # (1, n)
        logits = np.empty((1, len(tokens), self.n_vocab), dtype=np.float32)
        keep = (self.ort.OrtValue.ortvalue_from_numpy(ids), self.ort.OrtValue.ortvalue_from_numpy(logits))
        slot.binding.bind_ortvalue_input("input_ids", keep[0])
        slot.binding.bind_ortvalue_output("logits", keep[1])
        self.sess.run_with_iobinding(slot.binding)
        return logits[0]

    def logits_all(self, seq: int, tokens: list[int], pos0: int) -> np.ndarray:
        """(n, vocab) logits of every token of a chunk (tests and evaluation)."""
        slot = self.slots[seq]
        mask = self._mask(pos0 + len(tokens))
        slot.binding.bind_ortvalue_input("attention_mask", mask)
        return self._run_chunk(slot, tokens)

    def row_logits(self, row: int) -> np.ndarray:
        """(vocab,) logits of a row that the last decode() returned."""
        return self._rows[row]

    def sample(self, sampler: NumpySampler, row: int) -> int:
        return sampler.sample(self.row_logits(row))

    def logits_row(self, row: int) -> np.ndarray:
        return self._rows[row]  # (vocab,) the slot's output buffer, unchanged by the sampler

    def free(self) -> None:
        self.slots = []
        self.sess = None


def batcher_class(folder: Path) -> type[OnnxBatcher]:
    """OnnxBatcher for our graphs (KV shared in place), ConcatBatcher for optimum's (manifest `kv_cache`)."""
    from edge.formats.onnx import read_manifest

    model = read_manifest(folder)["model"]
    if model.get("task", "text-generation") != "text-generation":
        raise ModelFormatError(
            f"{folder} holds an ONNX {model.get('task')} model; the ONNX backend serves text generation only "
            "(serve an encoder for /v1/embeddings as GGUF: edge-quantize convert SRC --to f16)"
        )
    if model.get("kv_cache", "inplace") == "concat":
        from edge.engine.onnx.concat import ConcatBatcher

        return ConcatBatcher
    return OnnxBatcher


class OnnxEngine(SchedulerEngine):
    """An ONNX model folder served by onnxruntime with N slots."""

    def __init__(
        self,
        folder: Path,
        *,
        name: str,
        n_ctx: int | None = None,
        n_parallel: int = 1,
        n_threads: int | None = None,
        queue_size: int = 16,
        providers=None,
        **_ignored,
    ):
        t0 = time.perf_counter_ns()
        threads = n_threads or default_threads()
        self._batcher = batcher_class(Path(folder))(
            Path(folder), n_ctx=n_ctx, n_parallel=n_parallel, n_threads=threads, providers=providers
        )
        self.info = self._batcher.model_info(name)
        self.n_threads = threads
        self.scheduler = Scheduler(self._batcher, queue_size=queue_size, name=f"edge-decode-{name}")
        self.load_ns = time.perf_counter_ns() - t0
        self._closed = False

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._batcher.vocab.tokenize(text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self._batcher.vocab.detokenize(tokens)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.scheduler.close()
        self._batcher.free()
