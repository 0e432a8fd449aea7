"""A numpy sampler with the GGUF backend's features, in llama.cpp's chain order.

penalties (repeat over the last `repeat_last_n` sampled tokens, presence, frequency) -> greedy
argmax, or top_k -> top_p -> min_p -> temperature -> a seeded draw. Like llama.cpp's penalties
sampler, the history is the tokens this sampler produced (not the prompt). One logits row per call,
(vocab,) float32, read-only: the few penalized entries are changed on a copy.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from edge.engine.base import SamplingParams
from edge.errors import BadRequestError


class NumpySampler:
    def __init__(self, p: SamplingParams):
        if p.grammar:
            raise BadRequestError(
                "grammars (response_format json_object/json_schema) are not supported by the "
                "ONNX backend; serve a GGUF model for constrained output",
                param="response_format",
            )
        self.p = p
        self.rng = np.random.default_rng(p.seed)
        self.history: deque[int] = deque(maxlen=max(p.repeat_last_n, 0) or None)
        self.counts: dict[int, int] = {}
        self.penalized = p.repeat_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)

    def sample(self, logits: np.ndarray) -> int:
        """logits: (vocab,) float32 -> the next token id."""
        x = self._penalize(logits) if self.penalized and self.counts else logits
        if self.p.temperature <= 0:
            token = int(np.argmax(x))
        else:
            token = self._draw(x)
        self._accept(token)
        return token

    def _accept(self, token: int) -> None:
        if self.history.maxlen is not None and len(self.history) == self.history.maxlen:
            old = self.history[0]
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        self.history.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1

    def _penalize(self, logits: np.ndarray) -> np.ndarray:
        x = logits.copy()
        ids = np.fromiter(self.counts.keys(), dtype=np.int64)  # (n,) tokens seen
        n = np.fromiter(self.counts.values(), dtype=np.float32)  # (n,) how often
        v = x[ids]
        rp = self.p.repeat_penalty
        v = np.where(v <= 0, v * rp, v / rp)
        x[ids] = v - n * self.p.frequency_penalty - self.p.presence_penalty
        return x

    def _draw(self, x: np.ndarray) -> int:
        p = self.p
        if 0 < p.top_k < x.shape[0]:
            ids = np.argpartition(-x, p.top_k - 1)[: p.top_k]  # (k,) unordered
        else:
            ids = np.arange(x.shape[0])
        vals = x[ids].astype(np.float64)
        order = np.argsort(-vals, kind="stable")
        ids, vals = ids[order], vals[order]  # (k,) best first
        if p.top_p < 1.0:
            probs = _softmax(vals)
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            ids, vals = ids[:keep], vals[:keep]
        if p.min_p > 0.0:
            keep = vals >= vals[0] + np.log(p.min_p)
            ids, vals = ids[keep], vals[keep]
        probs = _softmax(vals / p.temperature)
        return int(ids[self.rng.choice(len(ids), p=probs)])


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v[0] if v.size else v)
    return e / e.sum()
