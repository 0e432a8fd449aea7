"""The figures: KL divergence against the reference, perplexity, same top token.

Same method as `llama-perplexity --kl-divergence` (tools/perplexity in llama.cpp): KL(reference ||
variant) is summed over the vocabulary entries whose reference log-probability is above -16;
perplexity is exp(mean negative log-likelihood).

The reference's full-vocabulary log-softmax is spilled to a temporary file (16-bit codes over the
top 16 nats of each row, plus a float32 scale and minimum: llama.cpp's own --kl-divergence-base
layout per row), so at most one chunk of it is ever in memory.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

MIN_LOG_PROB = -16.0  # llama.cpp ignores reference probabilities below e^-16 in the KL sum
CODE_MAX = 65535.0  # 16-bit codes for log-probabilities in [max-16, max]
ROW_BLOCK = 32  # rows of logits turned into log-softmax at once (bounds float64 temporaries)


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
