"""Paired per-layer timing of the head mix's short-reduction layer forms, one thread, on L1-resident tile buffers
(2026-11-28, twentieth session). For each layer shape of H heads (F = 4H; fc1 is F x H4, fc2 F x F, fc3 H4 x F,
and the backward's transposes), 40 alternating rounds of 2,000 calls per form; prints the time of one tile for
the first form (one output row at a time, the form before this session) and each other form's paired median
ratio to it, with quartiles. MISALIGN=8 starts every buffer 32 bytes past a cache line, as numba's np.empty did.

    .venv/bin/python docs/results/2026-11-28-s20/layer_forms.py H [tile]
    MISALIGN=8 .venv/bin/python docs/results/2026-11-28-s20/layer_forms.py 3
"""
import os, sys, time
import neatt  # noqa: F401  (first: its settings precede numba)
import numpy as np
from numba import njit
from neatt.models import head_mix_cpu as HM

H = int(sys.argv[1]); tile = int(sys.argv[2]) if len(sys.argv) > 2 else 128
F, H4 = 4 * H, HM._padded(H)
MISALIGN = int(os.environ.get('MISALIGN', '0'))  # float32 elements past a 64-byte boundary
post = HM._post


@njit(fastmath=True)
def rows1(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
    for r in range(rows):
        o = r * tile
        for t in range(T):
            a = b[r]
            for k in range(k_len):
                a += w[r * k_len + k] * src[k * tile + t]
            out[o + t] = post(a, h, o + t, slope, mode)


@njit(fastmath=True)
def rows2(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
    for r in range(0, rows, 2):
        o = r * tile
        for t in range(T):
            a0, a1 = b[r], b[r + 1]
            for k in range(k_len):
                s = src[k * tile + t]
                a0 += w[r * k_len + k] * s
                a1 += w[(r + 1) * k_len + k] * s
            out[o + t] = post(a0, h, o + t, slope, mode)
            out[o + tile + t] = post(a1, h, o + tile + t, slope, mode)


@njit(fastmath=True)
def rows4(out, w, b, src, h, T, slope, rows, k_len, tile, mode):
    for r in range(0, rows, 4):
        o = r * tile
        for t in range(T):
            a0, a1, a2, a3 = b[r], b[r + 1], b[r + 2], b[r + 3]
            for k in range(k_len):
                s = src[k * tile + t]
                i = r * k_len + k
                a0 += w[i] * s
                a1 += w[i + k_len] * s
                a2 += w[i + 2 * k_len] * s
                a3 += w[i + 3 * k_len] * s
            out[o + t] = post(a0, h, o + t, slope, mode)
            out[o + tile + t] = post(a1, h, o + tile + t, slope, mode)
            out[o + 2 * tile + t] = post(a2, h, o + 2 * tile + t, slope, mode)
            out[o + 3 * tile + t] = post(a3, h, o + 3 * tile + t, slope, mode)


FORMS = {'rows1': rows1, 'rows2': rows2, 'rows4': rows4}


def timed_loop(fn, rows, k_len, mode):
    """The layer with its sizes as closure constants, as the kernels call it."""
    @njit(fastmath=True)
    def f(n, out, w, b, src, h, T, slope):
        for _ in range(n):
            fn(out, w, b, src, h, T, slope, rows, k_len, tile, mode)
    return f


rng = np.random.default_rng(0)


def buffer(rows):
    raw = np.empty(rows * tile + 32, np.float32)
    start = -raw.ctypes.data % 64 // 4 + MISALIGN
    a = raw[start:start + rows * tile]
    a[:] = rng.standard_normal(rows * tile)
    return a


n = 2000
for name, rows, k, mode in [('fc1', F, H4, HM._LRELU), ('fc2', F, F, HM._LRELU), ('fc3', H4, F, HM._IDENTITY),
                            ('fc2T', F, F, HM._LRELU_GRAD), ('fc1T', H4, F, HM._IDENTITY)]:
    if k > 16:
        continue  # long reductions take the other path
    out, src, h = buffer(rows), buffer(k), buffer(rows)
    w, b = rng.standard_normal(rows * k).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    args = (out, w, b, src, h, tile, np.float32(0.2))
    loops = {form: timed_loop(fn, rows, k, mode) for form, fn in FORMS.items()}
    results = {}
    for form, f in loops.items():
        f(1, *args)
        results[form] = out.copy()
    times = {form: [] for form in loops}
    for _ in range(40):
        for form, f in loops.items():
            t = time.perf_counter()
            f(n, *args)
            times[form].append(time.perf_counter() - t)
    cols = []
    for form in list(loops)[1:]:
        r = sorted(q / p for p, q in zip(times['rows1'], times[form]))
        same = np.allclose(results[form], results['rows1'], rtol=1e-4, atol=1e-4)
        cols.append('%s %.3f [%.2f..%.2f]%s' % (form, r[20], r[10], r[30], '' if same else ' DIFFERENT'))
    print('%-4s %2d x %2d: rows1 %5.0f ns/tile; time vs rows1: %s' % (
        name, rows, k, 1e9 * np.median(times['rows1']) / n, '  '.join(cols)))
