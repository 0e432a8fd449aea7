"""The ladder run: one reference and any number of variants, measured on the same chunks -> the report.

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

Variants are anything with the LogitsModel shape (models.py: GGUF files and ONNX folders). The
pieces: text.py (which text, chunks), models.py (logits), metrics.py (the figures and the spill),
report.py (the tables and files); this module only runs them in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.errors import BadRequestError, ModelFormatError
from edge.fsio import temp_name

from .metrics import ROW_BLOCK, ReferenceSpill, Stats, kl_rows, score_rows
from .models import GgufModel, LogitsModel, OnnxModel, open_model
from .report import Report, Row, source_notes
from .text import DEFAULT_TEXT_CHAIN, EvalText, chunks

# -- one reference, many variants -------------------------------------------------------------------


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
            self.bos = model.bos if isinstance(model, GgufModel) and model.add_bos else None
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
        model = open_model(path, self.config.ctx, self.config.n_threads)
        try:
            n_vocab = self.spill.n_vocab
            if model.n_vocab != n_vocab and not (isinstance(model, OnnxModel) and model.n_vocab > n_vocab):
                raise ModelFormatError(
                    f"{path} has {model.n_vocab} tokens in its vocabulary, the reference "
                    f"{self.reference} has {n_vocab}: they are not the same model"
                )
            return self.run_model(model, Path(path), label)
        finally:
            model.close()

    def run_model(self, model: LogitsModel, path: Path, label: str | None = None) -> VariantFigures:
        """Any model with the LogitsModel shape (benchmarks bring other runtimes' folders), on the
        reference's chunks; logits rows past the reference's vocabulary (padding) are dropped."""
        if self.spill is None:
            self.run_reference()
        assert self.spill is not None
        t0 = time.perf_counter()
        stats = Stats()
        todo = self._chunks(self.bos)
        for i, chunk in enumerate(todo):
            logits = model.chunk_logits(chunk, self.first)[:-1, : self.spill.n_vocab]  # (ctx-1-first, V)
            self._compare(i, logits, chunk[self.first + 1 :], stats)
            self.progress(label or Path(path).name, i + 1, len(todo))
        figures = stats.summary() | self._speed(model)
        return VariantFigures(Path(path), model.n_vocab, model.n_params, figures, time.perf_counter() - t0)

    def _compare(self, i: int, logits: np.ndarray, targets: np.ndarray, stats: Stats) -> None:
        assert self.spill is not None, "the reference is scored first (run_reference)"
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
            text_chain=DEFAULT_TEXT_CHAIN,
        )
        return rep.to_json()


def ladder_hook(
    name: str, folder: Path, source: Path, text: EvalText, config: EvalConfig, box: dict, progress_for=None
):
    """An after-hook for quantize.convert.convert: evaluates the outputs and puts the report in box["report"].

    The types quantized with an importance matrix are also quantized without it (temporary files,
    removed afterwards) so the report shows both figures."""
    from ..quantizer import TYPES, quantize_file

    def after(quantized_from: Path, results: list, matrix, bars) -> None:
        from ..progress import llama_log_to

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
                    tmp = temp_name(Path(folder) / f"{name}-{a.type.lower()}.gguf", "noimatrix-")
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
