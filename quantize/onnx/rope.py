"""Rotary-embedding caches for GroupQueryAttention: cos/sin of (position x inverse frequency).

GroupQueryAttention (do_rotary=1, rotary_interleaved=0) rotates q and k with rows of these caches,
HF's rotate-half layout, so HF weights are used unpermuted. Each cache: (max_positions, rot_dim/2)
float32. Scaling variants as transformers computes them (modeling_rope_utils): default, linear,
llama3 (per-frequency divisors), longrope (Phi-3: short/long factors + attention factor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CACHE_POSITIONS = 131072  # rows of the caches at most (the context a model can be loaded with)


@dataclass(frozen=True)
class Rope:
    dim: int  # rotary dimensions (head_dim, or less for partial rotary)
    base: float
    positions: int  # cache rows (= the longest context the graph supports)
    divisors: tuple[float, ...] | None = None  # per-frequency divisors (llama3, longrope), (dim/2,)
    linear: float = 1.0  # linear scaling factor (positions / factor)
    magnitude: float = 1.0  # longrope attention factor, multiplies cos and sin

    def inv_freq(self) -> np.ndarray:
        """(dim/2,) float32, as transformers computes it."""
        inv = 1.0 / (self.base ** (np.arange(0, self.dim, 2, dtype=np.int64).astype(np.float32) / self.dim))
        if self.divisors is not None:
            inv = inv / np.asarray(self.divisors, dtype=np.float32)
        return (inv / np.float32(self.linear)).astype(np.float32)

    def caches(self) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin), each (positions, dim/2) float32."""
        pos = np.arange(min(self.positions, MAX_CACHE_POSITIONS), dtype=np.float32)
        freqs = np.outer(pos, self.inv_freq()).astype(np.float32)  # (positions, dim/2)
        return (
            (np.cos(freqs) * self.magnitude).astype(np.float32),
            (np.sin(freqs) * self.magnitude).astype(np.float32),
        )
