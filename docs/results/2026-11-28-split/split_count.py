"""The mix forward with ViT-B's 48 hidden units as 32 + 16 instead of padded to 64, counted in sm_90 machine code
against the committed kernel (`_mix_fwd`) at the same launch settings: was the padding worth removing? Triton's
tile sizes are powers of two, so each layer becomes two or four dots; b1 still rides in the padded input row H,
b2 and b3 are added (no hidden unit is left over to carry them). The noise is the committed code's
(`_normals`).

    python docs/results/2026-11-28-split/split_count.py > docs/results/2026-11-28-split/output.txt

Counted only, no GPU: see docs/benchmarks.md, 2026-11-28 (eighteenth session).
"""
import importlib.util
import os

import triton
import triton.language as tl

from neatt.models import mix_softmax_triton as m

m._kernels()  # jits the module's helpers in its namespace; the names below are the jitted ones
from neatt.models.mix_softmax_triton import _leaky_relu, _normals  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('sass_count', os.path.join(HERE, '..', '2026-11-27-sass',
                                                                         'sass_count.py'))
counts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(counts)
INTS = dict(H=12, P=64 * 200 * 200, F=48)  # ViT-B/16 at batch 64, 200 tokens


@triton.jit
def mix_fwd_split(s_ptr, z_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, P, H, F, seed, sigma, slope,
                  HP: tl.constexpr, BLOCK_J: tl.constexpr, CHUNKS: tl.constexpr, NOISE: tl.constexpr,
                  PREC: tl.constexpr):
    FA: tl.constexpr = 32
    FB: tl.constexpr = 16
    hs = tl.arange(0, HP)
    js = tl.arange(0, BLOCK_J)
    fa = tl.arange(0, FA)
    fb = FA + tl.arange(0, FB)
    h_ok = hs < H
    head = hs.to(tl.int64)[:, None] * P
    cdt = s_ptr.dtype.element_ty
    w1a = tl.load(w1_ptr + fa[:, None] * H + hs[None, :], mask=h_ok[None, :], other=0.)
    w1b = tl.load(w1_ptr + fb[:, None] * H + hs[None, :], mask=h_ok[None, :], other=0.)
    w1a = tl.where(hs[None, :] == H, tl.load(b1_ptr + fa)[:, None], w1a).to(cdt)  # b1 in column H
    w1b = tl.where(hs[None, :] == H, tl.load(b1_ptr + fb)[:, None], w1b).to(cdt)
    w2aa = tl.load(w2_ptr + fa[:, None] * F + fa[None, :]).to(cdt)
    w2ab = tl.load(w2_ptr + fa[:, None] * F + fb[None, :]).to(cdt)
    w2ba = tl.load(w2_ptr + fb[:, None] * F + fa[None, :]).to(cdt)
    w2bb = tl.load(w2_ptr + fb[:, None] * F + fb[None, :]).to(cdt)
    w3a = tl.load(w3_ptr + hs[:, None] * F + fa[None, :], mask=h_ok[:, None], other=0.).to(cdt)
    w3b = tl.load(w3_ptr + hs[:, None] * F + fb[None, :], mask=h_ok[:, None], other=0.).to(cdt)
    b2a = tl.load(b2_ptr + fa).to(cdt).to(tl.float32)
    b2b = tl.load(b2_ptr + fb).to(cdt).to(tl.float32)
    b3 = tl.load(b3_ptr + hs, mask=h_ok, other=0.).to(cdt).to(tl.float32)
    first = tl.program_id(0).to(tl.int64) * (CHUNKS * BLOCK_J)
    for c in range(CHUNKS):
        p0 = first + c * BLOCK_J
        p = p0 + js
        mask = h_ok[:, None] & (p < P)[None, :]
        offs = head + p[None, :]
        x = tl.load(s_ptr + offs, mask=mask, other=1.)
        y = x.to(tl.float32) + b3[:, None]
        h1a = _leaky_relu(tl.dot(w1a, x, input_precision=PREC), slope).to(cdt)
        h1b = _leaky_relu(tl.dot(w1b, x, input_precision=PREC), slope).to(cdt)
        a2a = tl.dot(w2ab, h1b, tl.dot(w2aa, h1a, input_precision=PREC) + b2a[:, None], input_precision=PREC)
        a2b = tl.dot(w2bb, h1b, tl.dot(w2ba, h1a, input_precision=PREC) + b2b[:, None], input_precision=PREC)
        y = tl.dot(w3a, _leaky_relu(a2a, slope).to(cdt), y, input_precision=PREC)
        y = tl.dot(w3b, _leaky_relu(a2b, slope).to(cdt), y, input_precision=PREC)
        if NOISE:
            y += sigma * _normals(seed, P, p0, HP, BLOCK_J)
        tl.store(z_ptr + offs, y.to(z_ptr.dtype.element_ty), mask=mask)


def main():
    committed = m._kernels().mix_fwd
    for block_j, warps in ((16, 2), (32, 2), (64, 4), (128, 4)):
        settings = {'BLOCK_J': block_j, 'CHUNKS': 16, 'num_warps': warps}
        for noise in (False, True):
            tag = f'{block_j} positions, {warps} warps, noise {"on" if noise else "off"}'
            c = m.compile_launch(committed, settings, ints=INTS, HP=16, FP=64, MIX=True, NOISE=noise, FOLD=True)
            counts.report(f'padded to 64 (committed), {tag}', c, block_j)
            c = m.compile_launch(mix_fwd_split, settings, ints=INTS, HP=16, NOISE=noise)
            counts.report(f'32 + 16, {tag}', c, block_j)


if __name__ == '__main__':
    main()
