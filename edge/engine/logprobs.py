"""Log probabilities of a generated token and its top alternatives, from one logits row (backend-neutral).

The row is the model's raw output for the position, read in place (llama.cpp's logits buffer or
onnxruntime's output, never copied into Python objects): one pass for the maximum, one for
log-sum-exp, `argpartition` for the best k. Values are taken before temperature, penalties and
grammars, as llama-server reports them by default (`post_sampling_probs` off). Only a request with
`logprobs` reaches this module; numpy is imported here, not on the plain decode path.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from edge.engine.base import TokenLogprob


class Pieces(Protocol):
    def piece(self, token: int) -> bytes: ...  # the bytes a token adds to the answer
    def display_piece(self, token: int) -> bytes: ...  # the same, control tokens by their name


def log_softmax_at(row: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """row: (vocab,) float32 logits -> (log p(token), [(id, log p)] of the `top` best, best first).

    Ties are ordered by the lower id first, as llama.cpp's greedy sampler picks the lower id."""
    m = float(row.max())
    lse = m + math.log(float(np.exp(row - m).sum(dtype=np.float64)))
    alts: list[tuple[int, float]] = []
    k = min(top, row.shape[0])
    if k > 0:
        ids = np.argpartition(row, row.shape[0] - k)[row.shape[0] - k :]  # (k,) the best, unordered
        ids = ids[np.lexsort((ids, -row[ids]))]  # (k,) by logit descending, then id ascending
        alts = [(int(i), _finite(float(row[i]) - lse)) for i in ids]
    return _finite(float(row[token]) - lse), alts


def entry(row: np.ndarray, token: int, top: int, pieces: Pieces) -> TokenLogprob:
    """The TokenLogprob of `token` sampled from `row`, with its `top` alternatives."""
    logprob, alts = log_softmax_at(row, token, top)
    return TokenLogprob(
        token,
        pieces.piece(token),
        logprob,
        tuple(TokenLogprob(i, pieces.display_piece(i), lp) for i, lp in alts),
    )


def _finite(x: float) -> float:
    return x if x > TokenLogprob.FLOOR else TokenLogprob.FLOOR  # also maps NaN (a broken row) to the floor
