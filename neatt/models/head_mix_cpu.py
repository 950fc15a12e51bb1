"""Fused CPU kernel for the Ne-Att head mix y = s + g(s) on head-major (H, P) float32 logits.

g = Linear(H, F) -> LeakyReLU -> Linear(F, F) -> LeakyReLU -> Linear(F, H) (F = 4H) is only ~18 H^2 MACs per
position, so as three GEMMs over P = B*N*N positions it is bound by the F-wide intermediates that go to memory and
back several times. Here each thread takes a tile of positions, keeps the tile's hidden activations in L1/L2 and
never writes them out; backward recomputes them per tile. Written in numba because no library fuses an MLP over a
tiny feature axis.

Speed comes from LLVM vectorizing the loop over a tile's positions: each layer goes two output rows at a time (two
FMA chains sharing each loaded input; long reductions in blocks of 8 inputs), over flat tile buffers with a row
stride, each starting on a cache line (`neatt.numba_arrays`: with numba's own alignment some straddled two per
vector). The closures of `_kernels(H, tile)` capture H, F and the tile size as constants (buffer sizes, the loads
and stores of a tile): numba's disk cache keys a closure by its captured values, so each H compiles once per
machine (8-10 s for both directions on the 2-core VM, 16-20 s before the blocks of 8; a cache hit loads in under a
second), whereas `numba.literally` re-dispatches from Python on every call. The constants matter: kernels that took
H as an argument ran 9-11x slower (2026-11-27). The layers (`_linear`, `_outer`) take the sizes as arguments and
are plain calls, no longer inlined into the closures by numba (its IR inlining deep-copies the callee per call
site, half of every compile): LLVM still gives each call site its own copy, specialized on the closure's constants
(three copies of `_linear` in the forward's IR), and 40 interleaved forward + backward calls in one process took
0.86-0.97x the inlined versions' time (paired medians, H = 3 and 12). Inside, every H axis is padded to a multiple
of 4 (zero weights, zero input rows), so that all row counts fit `_outer`'s four-row blocks and every reduction
splits into blocks of 4 or 8.
Constants do not reach into a `prange` body, and a `prange` driver would capture the closures (not cacheable),
so the runs of tiles go to Python threads, as many as torch uses, which take them in turn (`_in_parallel`); the
runs release the GIL.
"""
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as nnf
from numba import njit
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from neatt.numba_arrays import empty_aligned, zeros_aligned
from neatt.runtime import compile_on_a_fresh_stack, numba_threads_like_torch, use_threadsafe_numba

from .flops import head_mix_flops

__all__ = ['head_mix']

use_threadsafe_numba()


def _padded(hidden: int) -> int:
    return (hidden + 3) // 4 * 4


_FORWARD_TILE = 128  # positions per forward tile, any H (against 64: 0.67-0.94x the time at H = 12, the same at 6)
_BACKWARD_TILE_BYTES = 200 << 10


def _backward_tile(H: int) -> int:
    """Positions per backward tile: the largest power of two up to 512 whose six tile buffers (3 F + 3 H4 rows of
    float32) fit in 200 KiB. The weight grads are sums over a tile's positions, and longer sums paid off up to
    that size. Against the earlier 128 (H = 3) or 64 positions, paired runs on the 2-core VM (2026-11-28,
    docs/benchmarks.md): 0.92-0.95x the time at H = 3 (256 and 512 positions alike), 0.68-0.72x at H = 6 (512),
    0.74-0.81x at H = 12 (256; 512 was 0.77x, 1,024 0.88x)."""
    rows = 3 * 4 * H + 3 * _padded(H)
    tile = 512
    while tile > 64 and rows * tile * 4 > _BACKWARD_TILE_BYTES:
        tile //= 2
    return tile


_LRELU, _LRELU_GRAD, _IDENTITY = 0, 1, 2  # what `_linear` applies to its sums


@njit(inline='always', fastmath=True)
def _post(a, h, i, slope, mode):
    if mode == _LRELU:
        return a if a > 0 else a * slope
    if mode == _LRELU_GRAD:  # a * lrelu'(z) for the LeakyReLU output h[i] = lrelu(z), which has z's sign
        return a if h[i] > 0 else a * slope
    return a


@njit(inline='always', fastmath=True)
def _chain2(a0, a1, w, src, r, k0, n, k_len, t, tile):
    """Adds w[r + j, k0:k0 + n] . src[k0:k0 + n, t] to aj for the two rows j < 2."""
    for k in range(n):
        s = src[(k0 + k) * tile + t]
        a0 += w[r * k_len + k0 + k] * s
        a1 += w[(r + 1) * k_len + k0 + k] * s
    return a0, a1


@njit(fastmath=True, cache=True)  # called, not inlined: see the module docstring
def _linear(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
    """out[r] = post(b[r] + sum_k w[r, k] src[k]) over T <= tile positions, for r < rows (even) and k < k_len (a
    multiple of 4); out, src and the row-major w are flat, out and src with row stride `tile`. `mode` picks the
    post-op: a LeakyReLU, its gradient mask through `h`, or nothing.

    Two output rows at a time: two FMA chains share each loaded input, and their weights stay in registers. A
    short reduction (k_len <= 16) is one block, one chain per output. A longer one goes in blocks of 8 inputs (4
    when k_len is not a multiple of 8) that accumulate in `out`: the first block starts from the bias, the last
    applies the post-op. The branches on the block sit inside the position loops; LLVM still vectorizes them.

    Measured on the 2-core VM, one thread, per layer (2026-11-28): at H = 3, one row at a time ran 1.1-1.3x
    slower and four rows 1.4-1.6x slower than two (docs/results/2026-11-28-s20/layer_forms.py). For the long
    reductions (docs/results/2026-11-28-s21/long_forms.py), two rows in blocks of 8 took 0.54-0.61x the time of
    the four rows in blocks of 4 used before at H = 6 and 0.70-0.81x at H = 12; in blocks of 4, 0.62-0.70x at
    H = 5. Against the same, a whole chain of 48 inputs ran 4.7-5x slower (LLVM no longer vectorized it over
    positions), and the blocks of 8 as three separate loops (first, middle, last) 1.8-2.3x slower: they
    compiled to gathers.
    """
    block = k_len if k_len <= 16 else 8 if k_len % 8 == 0 else 4
    blocks = k_len // block
    for r in range(0, rows, 2):
        o = r * tile
        for t in range(T):
            a0, a1 = _chain2(b[r], b[r + 1], w, src, r, 0, block, k_len, t, tile)
            if blocks == 1:
                a0, a1 = _post(a0, h, o + t, slope, mode), _post(a1, h, o + tile + t, slope, mode)
            out[o + t], out[o + tile + t] = a0, a1
        for kb in range(1, blocks):
            for t in range(T):
                a0, a1 = _chain2(out[o + t], out[o + tile + t], w, src, r, kb * block, block, k_len, t, tile)
                if kb == blocks - 1:
                    a0, a1 = _post(a0, h, o + t, slope, mode), _post(a1, h, o + tile + t, slope, mode)
                out[o + t], out[o + tile + t] = a0, a1


@njit(fastmath=True, cache=True)  # called, not inlined: see the module docstring
def _outer(g, gb, a, c, T, rows, cols, tile):
    """g[i, j] += sum_t a[i, t] c[j, t] and gb[i] += sum_t a[i, t] over T <= tile positions (a weight grad and its
    bias grad); a and c flat with row stride `tile`, rows and cols multiples of 4, g row-major. Four rows of `a`
    by two of `c` per pass: eight independent sums, six loads per eight FMAs."""
    for i in range(0, rows, 4):
        ra = i * tile
        for j in range(0, cols, 2):
            rc = j * tile
            s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = np.float32(0)
            for t in range(T):
                c0, c1 = c[rc + t], c[rc + tile + t]
                v = a[ra + t]
                s00 += v * c0
                s01 += v * c1
                v = a[ra + tile + t]
                s10 += v * c0
                s11 += v * c1
                v = a[ra + 2 * tile + t]
                s20 += v * c0
                s21 += v * c1
                v = a[ra + 3 * tile + t]
                s30 += v * c0
                s31 += v * c1
            gi = i * cols + j
            g[gi] += s00
            g[gi + 1] += s01
            g[gi + cols] += s10
            g[gi + cols + 1] += s11
            g[gi + 2 * cols] += s20
            g[gi + 2 * cols + 1] += s21
            g[gi + 3 * cols] += s30
            g[gi + 3 * cols + 1] += s31
    for i in range(rows):
        s = np.float32(0)
        for t in range(T):
            s += a[i * tile + t]
        gb[i] += s


@njit(inline='always', fastmath=True)
def _load(dst, src, t0, T, H, tile):
    """dst[h, :T] = src[h, t0:t0 + T] for the H real rows of the flat tile buffer dst."""
    for h in range(H):
        r = src[h, t0:t0 + T]
        for t in range(T):
            dst[h * tile + t] = r[t]


@njit(inline='always', fastmath=True)
def _residual(dst, a, b, t0, T, H, tile):
    """dst[h, t0:t0 + T] = a[h, :T] + b[h, :T] for the H real rows of the flat tile buffers a and b."""
    for h in range(H):
        r = dst[h, t0:t0 + T]
        for t in range(T):
            r[t] = a[h * tile + t] + b[h * tile + t]


@functools.lru_cache(maxsize=None)
def _kernels(H: int, tile: int):
    """(forward_run, backward_run) for H heads and `tile` positions per tile (module docstring): each processes
    tiles i0 to i1.

    They capture ints only: numba keys a closure's cache entry by its captured values, and a captured jitted
    function pickles with a per-process id, a miss every time (so the helpers are module-level functions that
    take the constants as arguments, and the runs are launched from Python threads, not from a `prange` driver,
    which would capture them)."""
    F, H4 = 4 * H, _padded(H)

    @njit(fastmath=True, nogil=True, cache=True)
    def forward_run(x, w1, b1, w2, b2, w3, b3, slope, y, i0, i1):
        P = x.shape[1]
        xb = zeros_aligned(H4 * tile, np.float32)  # padding rows stay zero
        h1 = empty_aligned(F * tile, np.float32)
        h2 = empty_aligned(F * tile, np.float32)
        g = empty_aligned(H4 * tile, np.float32)
        for i in range(i0, i1):
            t0 = i * tile
            T = min(tile, P - t0)
            _load(xb, x, t0, T, H, tile)
            _linear(h1, w1, b1, xb, h1, T, slope, F, H4, tile, _LRELU)
            _linear(h2, w2, b2, h1, h2, T, slope, F, F, tile, _LRELU)
            _linear(g, w3, b3, h2, g, T, slope, H4, F, tile, _IDENTITY)
            _residual(y, xb, g, t0, T, H, tile)

    @njit(fastmath=True, nogil=True, cache=True)
    def backward_run(gy, x, w1, b1, w2, b2, w1t, w2t, w3t, slope, gx, gw1, gb1, gw2, gb2, gw3, gb3, i0, i1):
        P = x.shape[1]
        xb = zeros_aligned(H4 * tile, np.float32)
        gyb = zeros_aligned(H4 * tile, np.float32)
        h1 = empty_aligned(F * tile, np.float32)
        h2 = empty_aligned(F * tile, np.float32)
        d = empty_aligned(F * tile, np.float32)
        g = empty_aligned(H4 * tile, np.float32)
        zeros = np.zeros(F, np.float32)
        for i in range(i0, i1):
            t0 = i * tile
            T = min(tile, P - t0)
            _load(xb, x, t0, T, H, tile)
            _load(gyb, gy, t0, T, H, tile)
            _linear(h1, w1, b1, xb, h1, T, slope, F, H4, tile, _LRELU)
            _linear(h2, w2, b2, h1, h2, T, slope, F, F, tile, _LRELU)
            # fc3 (y = x + W3 h2 + b3): W3's and b3's grads
            _outer(gw3, gb3, gyb, h2, T, H4, F, tile)
            # d2 = (W3^T gy) * lrelu'(fc2), then W2's and b2's grads
            _linear(d, w3t, zeros, gyb, h2, T, slope, F, H4, tile, _LRELU_GRAD)
            _outer(gw2, gb2, d, h1, T, F, F, tile)
            # d1 = (W2^T d2) * lrelu'(fc1) into h2 (free now), then W1's and b1's grads
            _linear(h2, w2t, zeros, d, h1, T, slope, F, F, tile, _LRELU_GRAD)
            _outer(gw1, gb1, h2, xb, T, F, H4, tile)
            # gx = gy + W1^T d1 (the residual)
            _linear(g, w1t, zeros, h2, g, T, slope, H4, F, tile, _IDENTITY)
            _residual(gx, gyb, g, t0, T, H, tile)

    return forward_run, backward_run


@functools.lru_cache(maxsize=None)
def _pool(pid: int) -> ThreadPoolExecutor:
    """The worker threads of process `pid` (a forked child gets its own: it inherits the pool, not its threads)."""
    return ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix='head_mix')


def _runs(ntiles: int, threads: int) -> int:
    return min(ntiles, 8 * threads)


def _in_parallel(run, ntiles: int, threads: int) -> None:
    """run(r, i0, i1) for the runs r < _runs(ntiles, threads) of consecutive tiles, taken in turn by `threads`
    workers (this thread and pool threads; the runs release the GIL).

    Taken in turn, not split evenly up front: right after a torch op, torch's OpenMP threads keep spinning for a
    while on the cores our workers need, and a worker that shares its core then does fewer runs instead of
    holding up the others (an even split made the head mix ~1.5-2x slower inside a training step than alone).
    Which worker does a run does not change any result: runs write disjoint outputs (and their own weight-grad
    slots, summed in run order), so the results stay bitwise reproducible.
    """
    runs = _runs(ntiles, threads)
    next_run = iter(range(runs))  # shared by the workers: next() is atomic under the GIL

    def worker():
        for r in next_run:
            run(r, r * ntiles // runs, (r + 1) * ntiles // runs)

    futures = [_pool(os.getpid()).submit(worker) for _ in range(1, threads)]
    worker()
    for f in futures:
        f.result()


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _flat(t: Tensor) -> np.ndarray:
    return _np(t).reshape(-1)


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    return nnf.pad(t.detach(), (0, 0) * (t.dim() - 1) + (0, rows - t.shape[0]))


def _pad_cols(t: Tensor, cols: int) -> Tensor:
    return nnf.pad(t.detach(), (0, cols - t.shape[1]))


@torch.library.custom_op('neatt::head_mix', mutates_args=())
def head_mix(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor,
             negative_slope: float) -> Tensor:
    """y = x + g(x) for head-major x of shape (H, ...); all float32 CPU tensors, weights as `nn.Linear` stores them.

    A custom op, so that autograd uses the fused backward and `torch.compile` keeps it as one opaque call. It
    takes and returns the logits' own shape: a view of its output would turn the caller's in-place noise add
    into a CopySlices node that copies the whole gradient in backward.
    """
    H, H4, tile = x.shape[0], _padded(x.shape[0]), _FORWARD_TILE
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    forward_run, _ = _kernels(H, tile)
    args = (_np(x).reshape(H, -1), _flat(_pad_cols(w1, H4)), _np(b1), _flat(w2), _np(b2), _flat(_pad_rows(w3, H4)),
            _np(_pad_rows(b3, H4)), np.float32(negative_slope), y.numpy().reshape(H, -1))
    compile_on_a_fresh_stack(forward_run, *args, 0, 1)
    _in_parallel(lambda r, i0, i1: forward_run(*args, i0, i1), -(-x[0].numel() // tile), numba_threads_like_torch())
    return y


@torch.library.custom_op('neatt::head_mix_backward', mutates_args=())
def _head_mix_backward(gy: Tensor, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor,
                       negative_slope: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(gx, gw1, gb1, gw2, gb2, gw3, gb3) of `head_mix` for the upstream gradient gy (x's shape)."""
    F, H = w1.shape
    H4, tile = _padded(H), _backward_tile(H)
    threads = numba_threads_like_torch()
    ntiles = -(-x[0].numel() // tile)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    # weight grads per run, summed here in run order: no shared accumulator, the same sums whichever thread ran what
    grads = [torch.zeros(_runs(ntiles, threads), n) for n in (F * H4, F, F * F, F, H4 * F, H4)]
    _, backward_run = _kernels(H, tile)
    w1p, w3p = _pad_cols(w1, H4), _pad_rows(w3, H4)
    args = (_np(gy).reshape(H, -1), _np(x).reshape(H, -1), _flat(w1p), _np(b1), _flat(w2), _np(b2), _flat(w1p.t()),
            _flat(w2.t()), _flat(w3p.t()), np.float32(negative_slope), gx.numpy().reshape(H, -1))
    per_run = [g.numpy() for g in grads]
    compile_on_a_fresh_stack(backward_run, *args, *(g[0] for g in per_run), 0, 1)
    _in_parallel(lambda r, i0, i1: backward_run(*args, *(g[r] for g in per_run), i0, i1), ntiles, threads)
    gw1, gb1, gw2, gb2, gw3, gb3 = (g.sum(0) for g in grads)
    return gx, gw1.view(F, H4)[:, :H].contiguous(), gb1, gw2.view(F, F), gb2, gw3.view(H4, F)[:H], gb3[:H]


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


@register_flop_formula(torch.ops.neatt.head_mix)
def _forward_flops(x_shape, w1_shape, *args, **kwargs) -> int:
    return head_mix_flops(x_shape, w1_shape)


@register_flop_formula(torch.ops.neatt.head_mix_backward)
def _backward_flops(gy_shape, x_shape, w1_shape, *args, **kwargs) -> int:
    return head_mix_flops(x_shape, w1_shape, backward=True)
