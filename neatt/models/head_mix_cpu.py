"""Fused CPU kernel for the Ne-Att head mix y = s + g(s) on head-major (H, P) float32 logits.

g = Linear(H, F) -> LeakyReLU -> Linear(F, F) -> LeakyReLU -> Linear(F, H) (F = 4H) is only ~18 H^2 MACs per
position, so as three GEMMs over P = B*N*N positions it is bound by the F-wide intermediates that go to memory and
back several times. Here each thread takes a tile of positions, keeps the tile's hidden activations in L1/L2 and
never writes them out; backward recomputes them per tile. Written in numba because no library fuses an MLP over a
tiny feature axis; the inner loops run over contiguous positions so that LLVM vectorizes them.
"""
from typing import Tuple

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from neatt.runtime import numba_threads_like_torch, use_threadsafe_numba

__all__ = ['head_mix']

use_threadsafe_numba()


def _tile(hidden: int) -> int:
    """Positions per tile: the three (F, tile) float32 buffers stay within L2 (512 at H = 3, 256 at H = 12 were
    the fastest on a 2-core EPYC; measured with 32 to 512)."""
    return max(64, min(512, (12288 // hidden) // 64 * 64))


@njit(inline='always', fastmath=True)
def _mix_into(out, w, src, t0, T):
    """out[t] += sum_k w[k] * src[k, t0 + t] for t < T.

    Four source rows per pass, so that each load and store of `out` carries four FMAs (a row at a time is bound
    by those loads and stores). Rows are 1-D views indexed by a `range` variable: numba then drops its
    negative-index wraparound check, which would keep LLVM from vectorizing over t.
    """
    K = w.shape[0]
    k4 = K - K % 4
    for k in range(0, k4, 4):
        wa, wb, wc, wd = w[k], w[k + 1], w[k + 2], w[k + 3]
        ra, rb = src[k, t0:t0 + T], src[k + 1, t0:t0 + T]
        rc, rd = src[k + 2, t0:t0 + T], src[k + 3, t0:t0 + T]
        for t in range(T):
            out[t] += wa * ra[t] + wb * rb[t] + wc * rc[t] + wd * rd[t]
    for k in range(k4, K):
        wk = w[k]
        rk = src[k, t0:t0 + T]
        for t in range(T):
            out[t] += wk * rk[t]


@njit(inline='always', fastmath=True)
def _dots_into(acc, a, src, t0, T):
    """acc[k] += sum_t a[t] * src[k, t0 + t] for every row k, four rows per pass over `a`."""
    K = acc.shape[0]
    k4 = K - K % 4
    for k in range(0, k4, 4):
        ra, rb = src[k, t0:t0 + T], src[k + 1, t0:t0 + T]
        rc, rd = src[k + 2, t0:t0 + T], src[k + 3, t0:t0 + T]
        sa = sb = sc = sd = np.float32(0)
        for t in range(T):
            v = a[t]
            sa += v * ra[t]
            sb += v * rb[t]
            sc += v * rc[t]
            sd += v * rd[t]
        acc[k] += sa
        acc[k + 1] += sb
        acc[k + 2] += sc
        acc[k + 3] += sd
    for k in range(k4, K):
        rk = src[k, t0:t0 + T]
        s = np.float32(0)
        for t in range(T):
            s += a[t] * rk[t]
        acc[k] += s


@njit(inline='always', fastmath=True)
def _layer(out, w, b, src, t0, T, slope):
    """out[f, :T] = lrelu(b[f] + sum_k w[f, k] src[k, t0:t0 + T]) (no activation when slope is 1)."""
    for f in range(out.shape[0]):
        o = out[f]
        for t in range(T):
            o[t] = b[f]
        _mix_into(o, w[f], src, t0, T)
        if slope != 1:
            for t in range(T):
                o[t] = o[t] if o[t] > 0 else o[t] * slope


@njit(parallel=True, fastmath=True, cache=True)
def _forward(x, w1, b1, w2, b2, w3, b3, slope, tile, y):
    H, P = x.shape
    F = w1.shape[0]
    ntiles = (P + tile - 1) // tile
    for i in prange(ntiles):
        t0 = i * tile
        T = min(tile, P - t0)
        h1 = np.empty((F, tile), np.float32)
        h2 = np.empty((F, tile), np.float32)
        _layer(h1, w1, b1, x, t0, T, slope)
        _layer(h2, w2, b2, h1, 0, T, slope)
        for h in range(H):
            yr, xr = y[h, t0:t0 + T], x[h, t0:t0 + T]
            for t in range(T):
                yr[t] = xr[t] + b3[h]
            _mix_into(yr, w3[h], h2, 0, T)


@njit(inline='always', fastmath=True)
def _weight_grads(gw, gb, d, src, t0, T):
    """A layer's weight and bias grads from its output grads `d[:, :T]` and inputs `src[:, t0:t0 + T]`."""
    for f in range(d.shape[0]):
        dr = d[f, :T]
        for t in range(T):
            gb[f] += dr[t]
        _dots_into(gw[f], dr, src, t0, T)


@njit(inline='always', fastmath=True)
def _input_grads_through_lrelu(out, wt, d, t0, T, h, slope):
    """out[f, :T] = (W^T d)[f] * lrelu'(h[f]): `wt` is W transposed, `d[:, t0:t0 + T]` the layer's output grads
    and `h` its input, a LeakyReLU output (which has the sign of the LeakyReLU input, so it gives the slope)."""
    for f in range(out.shape[0]):
        o, hr = out[f], h[f]
        for t in range(T):
            o[t] = 0
        _mix_into(o, wt[f], d, t0, T)
        for t in range(T):
            o[t] = o[t] if hr[t] > 0 else o[t] * slope


@njit(parallel=True, fastmath=True, cache=True)
def _backward(gy, x, w1, b1, w2, b2, w3, w1t, w2t, w3t, slope, tile, nchunks, gx, gw1, gb1, gw2, gb2, gw3, gb3):
    """gx for all positions; weight grads per chunk (gw*[c], summed by the caller) so that threads never share.

    w*t are the transposed weights, contiguous, for the W^T d products.
    """
    H, P = x.shape
    F = w1.shape[0]
    ntiles = (P + tile - 1) // tile
    for c in prange(nchunks):
        h1 = np.empty((F, tile), np.float32)
        h2 = np.empty((F, tile), np.float32)
        d = np.empty((F, tile), np.float32)
        gw1[c] = 0
        gb1[c] = 0
        gw2[c] = 0
        gb2[c] = 0
        gw3[c] = 0
        gb3[c] = 0
        for i in range(c * ntiles // nchunks, (c + 1) * ntiles // nchunks):
            t0 = i * tile
            T = min(tile, P - t0)
            _layer(h1, w1, b1, x, t0, T, slope)
            _layer(h2, w2, b2, h1, 0, T, slope)
            # layer 3 (y = x + W3 h2 + b3): its weight grads, then d2 = (W3^T gy) * lrelu'(h2) into d
            _weight_grads(gw3[c], gb3[c], gy[:, t0:t0 + T], h2, 0, T)
            _input_grads_through_lrelu(d, w3t, gy, t0, T, h2, slope)
            # layer 2: weight grads from d2, then d1 = (W2^T d2) * lrelu'(h1) into h2 (free now)
            _weight_grads(gw2[c], gb2[c], d, h1, 0, T)
            _input_grads_through_lrelu(h2, w2t, d, 0, T, h1, slope)
            # layer 1: weight grads from d1, then gx = gy + W1^T d1 (the residual)
            _weight_grads(gw1[c], gb1[c], h2, x, t0, T)
            for h in range(H):
                o, gr = gx[h, t0:t0 + T], gy[h, t0:t0 + T]
                for t in range(T):
                    o[t] = gr[t]
                _mix_into(o, w1t[h], h2, 0, T)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


@torch.library.custom_op('neatt::head_mix', mutates_args=())
def head_mix(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor,
             negative_slope: float) -> Tensor:
    """y = x + g(x) for head-major x of shape (H, ...); all float32 CPU tensors, weights as `nn.Linear` stores them.

    A custom op, so that autograd uses the fused backward and `torch.compile` keeps it as one opaque call. It
    takes and returns the logits' own shape: a view of its output would turn the caller's in-place noise add
    into a CopySlices node that copies the whole gradient in backward.
    """
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    numba_threads_like_torch()
    _forward(_np(x).reshape(x.shape[0], -1), _np(w1), _np(b1), _np(w2), _np(b2), _np(w3), _np(b3),
             np.float32(negative_slope), _tile(w1.shape[0]), y.numpy().reshape(x.shape[0], -1))
    return y


@torch.library.custom_op('neatt::head_mix_backward', mutates_args=())
def _head_mix_backward(gy: Tensor, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor,
                       negative_slope: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(gx, gw1, gb1, gw2, gb2, gw3, gb3) of `head_mix` for the upstream gradient gy (x's shape)."""
    nchunks = numba_threads_like_torch()  # one chunk of weight grads per thread
    F, H = w1.shape
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    grads = [torch.empty(nchunks, *shape) for shape in ((F, H), (F,), (F, F), (F,), (H, F), (H,))]
    _backward(_np(gy).reshape(H, -1), _np(x).reshape(H, -1), _np(w1), _np(b1), _np(w2), _np(b2), _np(w3),
              _np(w1.t()), _np(w2.t()), _np(w3.t()), np.float32(negative_slope), _tile(F), nchunks,
              gx.numpy().reshape(H, -1), *(g.numpy() for g in grads))
    return (gx, *(g.sum(0) for g in grads))


@head_mix.register_fake
def _(x, w1, b1, w2, b2, w3, b3, negative_slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_head_mix_backward.register_fake
def _(gy, x, w1, b1, w2, b2, w3, negative_slope):
    b3_like = w3.new_empty(w3.shape[0])
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w1), torch.empty_like(b1),
            torch.empty_like(w2), torch.empty_like(b2), torch.empty_like(w3), b3_like)


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, w3, _, negative_slope = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2, w3)
    ctx.negative_slope = negative_slope


def _backward_rule(ctx, gy):
    return (*_head_mix_backward(gy, *ctx.saved_tensors, ctx.negative_slope), None)


head_mix.register_autograd(_backward_rule, setup_context=_setup_context)
