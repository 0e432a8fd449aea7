"""Block quantization to MatMulNBits' layout in numpy, weighted by activation statistics.

MatMulNBits (onnxruntime contrib op) computes x @ W with W (K, N) stored per output column n in
blocks of `block` weights along K, each block one float scale and (asymmetric) one zero point:
    W[k, n] = (q[k, n] - zp) * scale      q in 0 .. 2^bits - 1; zp = 2^(bits-1) when symmetric
Packed: B (N, k_blocks, block * bits / 8) uint8, two 4-bit values a byte, low nibble first;
scales (N, k_blocks) float32; zero points (N, ceil(k_blocks * bits / 8)) uint8, packed the same way.

`quantize_blocks` picks each block's scale (and zero point) to minimise the block's squared error
weighted by `importance` (per input channel k: the mean squared activation x_k^2, so the error
that reaches the output, not the error of the weight): a small grid of candidate scales around the
round-to-nearest one, each refined by weighted least squares, the best kept per block (the search
llama.cpp's make_qx_quants does with an importance matrix). Without importance every weight counts
the same, which already beats scale = max/7.

`awq_scales` is the activation-aware per-input-channel scaling (AWQ): W is quantized as W * s and
the input divided by s, so channels that see large activations get finer steps. s = mean(x^2)^(a/2),
a chosen per tensor from a small grid by the same weighted error.
"""

from __future__ import annotations

import numpy as np

CANDIDATES = np.linspace(-0.9, 0.9, 19, dtype=np.float32)  # offsets to the number of steps across a block's range
ALPHAS = (0.0, 0.25, 0.5, 0.75)  # AWQ exponents tried per tensor
AWQ_COLUMNS = 256  # output columns the exponent is chosen on


SLICE_BYTES = 1 << 22  # float32 bytes of the columns quantized at once: bounds the temporaries

# Each candidate's block error needs no third pass over the weights: with the least-squares scale
# s = num / den (num = sum imp w d, den = sum imp d^2, d the levels relative to the zero point),
# sum imp (w - s d)^2 = sum imp w^2 - num^2 / den. Only the winning candidate's levels are rebuilt.


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, kb, block) . (n, kb, block) or (kb, block) -> (n, kb) float64 (the error's small sums)."""
    return np.einsum("nbk,nbk->nb" if b.ndim == 3 else "nbk,bk->nb", a, b).astype(np.float64)


def _lsq_error(sww: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Weighted squared error of a block at its least-squares scale (den 0: every level 0)."""
    return sww - np.where(den > 0, num * num / np.where(den > 0, den, 1), 0)


def _fit(w: np.ndarray, imp: np.ndarray, d: np.ndarray, fallback: np.ndarray | float = 0.0):
    """The least-squares scale (n, kb, 1) of levels d for w (`fallback` where every level is 0),
    and its weighted error (n, kb, 1)."""
    iw = imp * w
    num, den = _dot(d, iw)[..., None], _dot(d * d, imp)[..., None]
    s = np.where(den > 0, num / np.where(den > 0, den, 1), fallback).astype(np.float32)
    err = (imp * (w - s * d) ** 2).sum(axis=-1, keepdims=True)
    return s, err


def _sym(w: np.ndarray, imp: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w (n, k_blocks, block), imp (k_blocks, block). Symmetric: q - zp in [-2^(b-1), 2^(b-1) - 1].
    Returns (q - zp, scale, weighted error) per block."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    m = np.take_along_axis(w, np.argmax(np.abs(w), axis=-1)[..., None], axis=-1)  # (n, kb, 1) signed extreme
    safe = np.where(m == 0, np.float32(1), m)
    iw = imp * w  # (n, kb, block)
    sww = _dot(iw, w)  # (n, kb)
    best_inv, best_err = np.zeros(sww.shape, np.float32), np.full(sww.shape, np.inf)
    q = np.empty_like(w)  # (n, kb, block) levels of the candidate
    for c in CANDIDATES:
        inv = (lo + c) / safe  # (n, kb, 1): the extreme lands on lo + c steps
        np.clip(np.rint(np.multiply(w, inv, out=q), out=q), lo, hi, out=q)
        num = _dot(q, iw)
        den = _dot(np.multiply(q, q, out=q), imp)
        err = _lsq_error(sww, num, den)
        better = err < best_err
        best_err, best_inv = np.where(better, err, best_err), np.where(better, inv[..., 0], best_inv)
    q = np.clip(np.rint(w * best_inv[..., None]), lo, hi)
    s, err = _fit(w, imp, q)
    return q, s, err


def _asym(w: np.ndarray, imp: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """As _sym with an integer zero point: returns (q, scale, zp, weighted error), q in [0, 2^b - 1]."""
    top = 2**bits - 1
    lo = np.minimum(w.min(axis=-1, keepdims=True), 0)
    rng = np.maximum(w.max(axis=-1, keepdims=True), 0) - lo
    rng = np.where(rng > 0, rng, np.float32(1))
    iw = imp * w
    sww = _dot(iw, w)
    best_s, best_err = np.zeros(sww.shape, np.float32), np.full(sww.shape, np.inf)
    d = np.empty_like(w)  # (n, kb, block) levels relative to the zero point
    for c in CANDIDATES:
        s = rng / (top + c)  # (n, kb, 1)
        zp = np.clip(np.rint(-lo / s), 0, top)
        np.clip(np.rint(np.divide(w, s, out=d), out=d) + zp, 0, top, out=d)
        np.subtract(d, zp, out=d)
        num = _dot(d, iw)
        den = _dot(np.multiply(d, d, out=d), imp)
        err = np.where(den > 0, _lsq_error(sww, num, den), sww)  # den 0: the candidate's own scale, d all 0
        better = err < best_err
        best_err, best_s = np.where(better, err, best_err), np.where(better, s[..., 0], best_s)
    s = best_s[..., None]
    zp = np.clip(np.rint(-lo / s), 0, top)
    q = np.clip(np.rint(w / s) + zp, 0, top)
    s2, err = _fit(w, imp, q - zp, fallback=s)  # no level off the zero point: the candidate's scale
    return q, s2, zp, err


def quantize_blocks(
    wt: np.ndarray, bits: int, block: int, symmetric: bool, importance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """wt (K, N) float32 -> (packed, scales, zero_points, error) in MatMulNBits' layout; error is
    sum_k importance_k * (wt - dequantized)^2 over the tensor. Columns go in slices of SLICE_BYTES."""
    k, n = wt.shape
    k_blocks = -(-k // block)
    imp = np.ones(k_blocks * block, np.float32) if importance is None else _pad(importance, k_blocks * block)
    imp = imp.reshape(k_blocks, block)  # (kb, block), the same for every column
    mid = 2 ** (bits - 1)
    packed = np.zeros((n, k_blocks, block * bits // 8), np.uint8)  # (N, kb, blob)
    scales = np.zeros((n, k_blocks), np.float32)  # (N, kb)
    zps = np.zeros((n, k_blocks), np.uint8)  # (N, kb) unpacked
    total = 0.0
    step = max(1, SLICE_BYTES // (4 * k_blocks * block))
    for j in range(0, n, step):
        w = np.zeros((min(step, n - j), k_blocks * block), np.float32)
        w[:, :k] = wt[:, j : j + step].T
        w = w.reshape(-1, k_blocks, block)  # (cols, kb, block)
        if symmetric:
            d, s, err = _sym(w, imp, bits)
            q, zp = d + mid, np.full(s.shape, mid, np.float32)
        else:
            q, s, zp, err = _asym(w, imp, bits)
        total += float(err.sum())
        packed[j : j + step] = _pack(q.astype(np.uint8), bits)
        scales[j : j + step], zps[j : j + step] = s[..., 0], zp[..., 0]
    return packed, scales, _pack(zps, bits, pad_to_byte=True), total


def dequantize(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int, k: int) -> np.ndarray:
    """The (K, N) float32 weights MatMulNBits computes with (tests; zeros None: symmetric)."""
    n, k_blocks, _ = packed.shape
    q = _unpack(packed, bits).reshape(n, k_blocks, -1).astype(np.float32)  # (N, kb, block)
    zp = np.full((n, k_blocks), 2 ** (bits - 1), np.float32) if zeros is None else _unpack(zeros, bits)[:, :k_blocks]
    return ((q - zp[..., None]) * scales[..., None]).reshape(n, -1)[:, :k].T


def _pad(v: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.float32)
    out[: len(v)] = v
    return out


def _pack(q: np.ndarray, bits: int, pad_to_byte: bool = False) -> np.ndarray:
    """Last axis packed: 8 bits as is, 4 bits two a byte with the first in the low nibble."""
    if bits == 8:
        return q
    if pad_to_byte and q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _unpack(p: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return p.astype(np.float32)
    return np.stack([p & 15, p >> 4], axis=-1).reshape(*p.shape[:-1], -1).astype(np.float32)


def awq_scales(
    wt: np.ndarray, bits: int, block: int, symmetric: bool, act_sq: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-input-channel s (K,) and the quantized W * s (packed, scales, zero points) with the least
    activation-weighted error of W: sum_k act_k (W - Q(W s) / s)^2 = sum_k (act_k / s_k^2) (W s - Q(W s))^2.
    The exponent is chosen on at most AWQ_COLUMNS evenly spaced output columns, then W * s quantized once."""
    mag = np.sqrt(np.maximum(act_sq, 1e-12)).astype(np.float32)  # (K,) rms activation per channel
    sample = wt[:, :: max(1, wt.shape[1] // AWQ_COLUMNS)]  # (K, <= 2 * AWQ_COLUMNS)
    best: tuple[float, np.ndarray] | None = None
    for a in ALPHAS:
        s = mag**a
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)  # centred on 1 in log scale
        err = quantize_blocks(sample * s[:, None], bits, block, symmetric, act_sq / (s * s))[3]
        if best is None or err < best[0]:
            best = (err, s)
    assert best is not None
    s = best[1]
    packed, scales, zeros, _ = quantize_blocks(wt * s[:, None], bits, block, symmetric, act_sq / (s * s))
    return s, (packed, scales, zeros)


GPTQ_DAMP = 0.01  # of the Hessian's mean diagonal, added to it (GPTQ's percdamp)
GPTQ_STEP = 128  # columns per lazy-batch update


def gptq(
    wt: np.ndarray, bits: int, block: int, symmetric: bool, hessian: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al.) on MatMulNBits' blocks: the K input rows are quantized in order, each
    block's scale chosen (as quantize_blocks, weighted by the Hessian's diagonal) from the weights as
    already corrected, and every row's rounding error pushed onto the rows not yet quantized through
    the inverse Hessian's Cholesky factor. wt (K, N); hessian (K, K) = sum of x x^T of the input."""
    k, n = wt.shape
    k_blocks = -(-k // block)
    kp = k_blocks * block
    h = np.zeros((kp, kp), np.float64)
    h[:k, :k] = hessian
    w = np.zeros((kp, n), np.float64)  # (K, N) rows corrected as we go
    w[:k] = wt
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(kp)] += GPTQ_DAMP * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # (K, K) upper: the inverse Hessian's Cholesky factor
    diag = np.diag(h).astype(np.float32)
    q_all = np.zeros((kp, n), np.float32)  # (K, N) integer levels
    scales = np.zeros((n, k_blocks), np.float32)
    zps = np.zeros((n, k_blocks), np.float32)
    mid = 2 ** (bits - 1)
    for i1 in range(0, kp, GPTQ_STEP):
        i2 = min(i1 + GPTQ_STEP, kp)
        err = np.zeros((i2 - i1, n), np.float64)  # (rows, N) scaled errors of this batch
        for i in range(i1, i2):
            b = i // block
            if i % block == 0:  # the block's grid, from the corrected weights
                g = w[i : i + block].T.astype(np.float32)[:, None, :]  # (N, 1, block)
                imp = diag[None, i : i + block]  # (1, block)
                if symmetric:
                    _, s, _ = _sym(g, imp, bits)
                    scales[:, b], zps[:, b] = s[:, 0, 0], mid
                else:
                    _, s, zp, _ = _asym(g, imp, bits)
                    scales[:, b], zps[:, b] = s[:, 0, 0], zp[:, 0, 0]
            s, zp = scales[:, b], zps[:, b]
            safe = np.where(s == 0, 1.0, s)
            q = np.clip(np.rint(w[i] / safe) + zp, 0, 2**bits - 1)
            q_all[i] = q
            e = (w[i] - (q - zp) * s) / u[i, i]
            w[i + 1 : i2] -= np.outer(u[i, i + 1 : i2], e)
            err[i - i1] = e
        w[i2:] -= u[i1:i2, i2:].T @ err
    q_blocks = q_all.T.reshape(n, k_blocks, block).astype(np.uint8)
    packed = _pack(q_blocks, bits)
    return packed, scales, _pack(zps.astype(np.uint8), bits, pad_to_byte=True)
