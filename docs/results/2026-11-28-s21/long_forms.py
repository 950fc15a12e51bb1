"""Paired per-layer timing of forms of the head mix's layers, one thread, on L1/L2-resident tile buffers
(2026-11-28, twenty-first session). For each layer of H heads (F = 4H; fc1 F x H4, fc2 F x F, fc3 H4 x F, and
the backward's transposes fc2T, fc1T), 30 alternating rounds of calls per form; prints the time per tile and
GMAC/s of the first form, and each other form's paired median time ratio to it. The sizes reach each form as
closure constants, as in the kernels.

Forms for the long reductions (k_len > 16 inputs, H >= 5):
- `rows4 b4`: four output rows, blocks of 4 inputs through `out`, first / middle / last block as separate loops
  (the committed form before this session);
- `rows2`: two output rows, each one chain of all k_len inputs (the committed form for k_len <= 16);
- `rows2 bK`: two output rows, blocks of K inputs through `out`, the last block's post-op under a branch;
- `rows2 b8 3 loops`: the same with the first / middle / last blocks as three loops;
- `now`: `head_mix_cpu._linear` as it is.

    .venv/bin/python docs/results/2026-11-28-s21/long_forms.py H [tile]
"""
import sys, time
import neatt  # noqa: F401  (first: its settings precede numba)
import numpy as np
from numba import njit
from neatt.models import head_mix_cpu as HM
from neatt.numba_arrays import empty_aligned

H = int(sys.argv[1]); tile = int(sys.argv[2]) if len(sys.argv) > 2 else 128
F, H4 = 4 * H, HM._padded(H)
post, chain2 = HM._post, HM._chain2


@njit(inline='always', fastmath=True)
def chain4(a0, a1, a2, a3, w, src, r, k0, t, k_len, tile):
    for k in range(4):
        s = src[(k0 + k) * tile + t]
        i = r * k_len + k0 + k
        a0 += w[i] * s
        a1 += w[i + k_len] * s
        a2 += w[i + 2 * k_len] * s
        a3 += w[i + 3 * k_len] * s
    return a0, a1, a2, a3


@njit(inline='always', fastmath=True)
def store4(out, h, o, slope, a0, a1, a2, a3, last, mode, tile):
    if last:
        a0, a1 = post(a0, h, o, slope, mode), post(a1, h, o + tile, slope, mode)
        a2, a3 = post(a2, h, o + 2 * tile, slope, mode), post(a3, h, o + 3 * tile, slope, mode)
    out[o], out[o + tile], out[o + 2 * tile], out[o + 3 * tile] = a0, a1, a2, a3


@njit(fastmath=True)
def rows4_b4(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
    blocks = k_len // 4
    for r in range(0, rows, 4):
        for t in range(T):
            a0, a1, a2, a3 = chain4(b[r], b[r + 1], b[r + 2], b[r + 3], w, src, r, 0, t, k_len, tile)
            store4(out, h, r * tile + t, slope, a0, a1, a2, a3, blocks == 1, mode, tile)
        for kb in range(1, blocks - 1):
            for t in range(T):
                o = r * tile + t
                a0, a1, a2, a3 = chain4(out[o], out[o + tile], out[o + 2 * tile], out[o + 3 * tile], w, src, r,
                                        kb * 4, t, k_len, tile)
                store4(out, h, o, slope, a0, a1, a2, a3, False, mode, tile)
        if blocks > 1:
            for t in range(T):
                o = r * tile + t
                a0, a1, a2, a3 = chain4(out[o], out[o + tile], out[o + 2 * tile], out[o + 3 * tile], w, src, r,
                                        k_len - 4, t, k_len, tile)
                store4(out, h, o, slope, a0, a1, a2, a3, True, mode, tile)


@njit(fastmath=True)
def rows2(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
    for r in range(0, rows, 2):
        o = r * tile
        for t in range(T):
            a0, a1 = chain2(b[r], b[r + 1], w, src, r, 0, k_len, k_len, t, tile)
            out[o + t], out[o + tile + t] = post(a0, h, o + t, slope, mode), post(a1, h, o + tile + t, slope, mode)


def rows2_blocks(K):
    @njit(fastmath=True)
    def f(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
        blocks = k_len // K
        for r in range(0, rows, 2):
            o = r * tile
            for t in range(T):
                a0, a1 = chain2(b[r], b[r + 1], w, src, r, 0, K, k_len, t, tile)
                if blocks == 1:
                    a0, a1 = post(a0, h, o + t, slope, mode), post(a1, h, o + tile + t, slope, mode)
                out[o + t], out[o + tile + t] = a0, a1
            for kb in range(1, blocks):
                for t in range(T):
                    a0, a1 = chain2(out[o + t], out[o + tile + t], w, src, r, kb * K, K, k_len, t, tile)
                    if kb == blocks - 1:
                        a0, a1 = post(a0, h, o + t, slope, mode), post(a1, h, o + tile + t, slope, mode)
                    out[o + t], out[o + tile + t] = a0, a1
    return f


@njit(fastmath=True)
def rows2_b8_three_loops(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
    blocks = k_len // 8
    for r in range(0, rows, 2):
        o = r * tile
        for t in range(T):
            out[o + t], out[o + tile + t] = chain2(b[r], b[r + 1], w, src, r, 0, 8, k_len, t, tile)
        for kb in range(1, blocks - 1):
            for t in range(T):
                out[o + t], out[o + tile + t] = chain2(out[o + t], out[o + tile + t], w, src, r, kb * 8, 8, k_len,
                                                       t, tile)
        for t in range(T):
            a0, a1 = chain2(out[o + t], out[o + tile + t], w, src, r, k_len - 8, 8, k_len, t, tile)
            out[o + t], out[o + tile + t] = post(a0, h, o + t, slope, mode), post(a1, h, o + tile + t, slope, mode)


FORMS = {'rows4 b4': (rows4_b4, 4), 'rows2': (rows2, 1), 'rows2 b4': (rows2_blocks(4), 4),
         'rows2 b8': (rows2_blocks(8), 8), 'rows2 b12': (rows2_blocks(12), 12),
         'rows2 b8 3 loops': (rows2_b8_three_loops, 8), 'now': (HM._linear, 4)}


def timed_loop(fn, rows, k_len, mode):
    @njit(fastmath=True)
    def f(n, out, w, b, src, h, T, slope):
        for _ in range(n):
            fn(out, w, b, src, h, T, slope, rows, k_len, tile, mode)
    return f


rng = np.random.default_rng(0)


def buffer(rows):
    a = empty_aligned(rows * tile, np.float32)
    a[:] = rng.standard_normal(rows * tile)
    return a


for name, rows, k, mode in [('fc1', F, H4, HM._LRELU), ('fc2', F, F, HM._LRELU), ('fc3', H4, F, HM._IDENTITY),
                            ('fc2T', F, F, HM._LRELU_GRAD), ('fc1T', H4, F, HM._IDENTITY)]:
    n = max(50, int(4e8 / (rows * k * tile)))
    out, src, h = buffer(rows), buffer(k), buffer(rows)
    w, b = rng.standard_normal(rows * k).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    args = (out, w, b, src, h, tile, np.float32(0.2))
    # each form where its blocks divide k_len (the three loops need three blocks or more)
    loops = {form: timed_loop(fn, rows, k, mode) for form, (fn, block) in FORMS.items()
             if k % block == 0 and (form != 'rows2 b8 3 loops' or k >= 24)}
    results = {}
    for form, f in loops.items():
        f(1, *args)
        results[form] = out.copy()
    times = {form: [] for form in loops}
    for _ in range(30):
        for form, f in loops.items():
            t = time.perf_counter()
            f(n, *args)
            times[form].append(time.perf_counter() - t)
    first = list(loops)[0]
    base = np.median(times[first]) / n
    cols = []
    for form in list(loops)[1:]:
        r = sorted(q / p for p, q in zip(times[first], times[form]))
        same = np.allclose(results[form], results[first], rtol=1e-4, atol=1e-3)
        cols.append('%s %.2f%s' % (form, r[15], '' if same else ' DIFFERENT'))
    print('%-4s %2d x %2d: %s %5.0f ns/tile, %4.1f GMAC/s; time vs it: %s' % (
        name, rows, k, first, 1e9 * base, rows * k * tile / base / 1e9, ', '.join(cols)), flush=True)
