"""Decoders with the Hugging Face ONNX interface (optimum's export), on the ONNX backend's scheduler.

Graph interface (optimum's `text-generation-with-past`, B = 1 here, P = tokens cached, S = new):
  inputs  input_ids int64 (B, S); attention_mask int64 (B, P + S); position_ids int64 (B, S);
          past_key_values.{i}.key/.value float (B, n_kv, P, head_dim)
  outputs logits float (B, S, vocab); present.{i}.key/.value float (B, n_kv, P + S, head_dim)

The present cache is a new, longer tensor each step, so nothing is shared in place: a slot keeps its
cache as the last step's present arrays and feeds them back as the next past. Keeping a prefix is a
slice. This costs a copy of the cache per step (onnxruntime's concatenation inside the graph), which
is why our own graph builder is preferred where it has the architecture.
"""

from __future__ import annotations

import numpy as np

from edge.engine.onnx.backend import OnnxBatcher
from edge.errors import EdgeError


class _ConcatSlot:
    def __init__(self, n_layers: int, n_kv: int, head_dim: int):
        empty = np.zeros((1, n_kv, 0, head_dim), dtype=np.float32)  # (1, n_kv, cached, head_dim)
        self.kv: list[np.ndarray] = [empty] * (2 * n_layers)  # key, value of block 0, then block 1, ...

    @property
    def cached(self) -> int:
        return int(self.kv[0].shape[2])


class ConcatBatcher(OnnxBatcher):
    """OnnxBatcher for optimum-exported decoders (manifest `kv_cache`: "concat")."""

    def _make_slots(self, n_parallel: int) -> list:
        m = self.m
        n_layers = int(m["n_layers"])
        self._past = [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
        self._outputs = ["logits"] + [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
        inputs = {i.name for i in self.sess.get_inputs()}
        self._has_positions = "position_ids" in inputs
        return [_ConcatSlot(n_layers, int(m["n_kv_heads"]), int(m["head_dim"])) for _ in range(n_parallel)]

    def keep_prefix(self, seq: int, n_keep: int) -> int:
        slot = self.slots[seq]
        n = max(0, min(n_keep, slot.cached))
        slot.kv = [kv[:, :, :n] for kv in slot.kv]
        return n

    def _run(self, slot, tokens: list[int], pos0: int) -> np.ndarray:
        return self._chunk(slot, tokens, pos0)[-1]

    def logits_all(self, seq: int, tokens: list[int], pos0: int) -> np.ndarray:
        return self._chunk(self.slots[seq], tokens, pos0)

    def _chunk(self, slot: _ConcatSlot, tokens: list[int], pos0: int) -> np.ndarray:
        """(n, vocab) logits of `tokens` placed at pos0.. on the slot's cache (cut to pos0 first)."""
        n = len(tokens)
        if pos0 + n > self.n_ctx:
            raise EdgeError(f"the slot's context of {self.n_ctx} tokens is full")
        if slot.cached > pos0:
            slot.kv = [kv[:, :, :pos0] for kv in slot.kv]
        elif slot.cached < pos0:
            raise EdgeError(f"the slot holds {slot.cached} tokens, the step starts at {pos0}")
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray(tokens, dtype=np.int64)[None, :],  # (1, n)
            "attention_mask": self.ones[:, : pos0 + n],  # (1, pos0 + n)
        }
        if self._has_positions:
            feeds["position_ids"] = np.arange(pos0, pos0 + n, dtype=np.int64)[None, :]  # (1, n)
        feeds.update(zip(self._past, slot.kv))
        logits, *present = self.sess.run(self._outputs, feeds)
        slot.kv = present
        return logits[0, :, : self.n_vocab]  # (n, vocab)
