"""Ne-Att's attention after q k^T on a GPU, in Triton: the logits' head mix and noise fused in one kernel, then
softmax(z) @ v as flash attention does it, with the logits read instead of computed.

Per block, on head-major logits s = a + z_prev (H, B, T, T) and values v (H, B, T, D), with g the cross-head MLP
(attention.HeadMix) and eps ~ N(0, 1)::

    z = s + g(s) + sigma * eps           (returned: the next block chains it)
    o = softmax(z, over keys) @ v        (returned laid out (B, N, H, D), the N real queries of T)

Why hand-written: as matmuls, g writes and re-reads two (4H, B*T*T) hidden activations per block, and the noise,
the softmax and attn @ v are more passes over (H, B, T, T) tensors (measured on an H100, ViT-B/16, bf16, batch
64, eager: Ne-Att took 2.9x vanilla's step, most of it in these passes). The kernels:

- `_mix_fwd`: chunks of positions for all H heads; loads s once, runs the MLP per position on tensor cores
  (features on the rows of a (4H, BLOCK_J) tile, H and 4H padded to powers of two, at least 16), adds the
  noise (`_normals`: the generator of logit_noise.py, four normals per Philox counter, a counter per four
  positions of a head, seeded by one draw from torch's generator per call) and stores z.
- `_attend_fwd`: one (head, image, query tile) per program; online softmax over key tiles of z, o += p @ v;
  stores o twice, in v's dtype for the projection (the layout it reads, so no cast or copy pass follows) and in
  float32 for the backward, and the rows' log-sum-exp. The probabilities never go to memory: before, a second
  sweep wrote them (H, B, T, T) for a batched matmul to read.
- `_attend_bwd`: one (head, image, key tile); recomputes p from z and the log-sum-exp, and writes dz = p (dp -
  delta) plus the next block's gradient of z, with dp = do v^T in float32 registers and delta = do . o per query
  (flash attention's identity; o in float32 so that it holds in bf16 too; `_attend_delta` computes delta in a
  pass first); sums dv = p^T do.
- `_mix_bwd`: ds = dz + J_g(s)^T dz, the MLP recomputed from s (saved instead of the hidden activations: H
  instead of 9H values per position). Weight gradients are summed in float32 registers per program (a
  persistent grid) and the programs' partial sums added in torch, in program order, so results do not depend on
  scheduling. Where H and 4H leave padding (every model but ViT-L's 16 heads), the MLP's biases ride in it
  (`_load_mlp`): the dots add them and, in the backward, sum their gradients (docs/benchmarks.md, 2026-11-28).

z is stored in the dtype of s (bf16 under autocast, as the matmul path gives it); the softmax reads z as
stored, so that it sees what the next block sees. The math is in float32 except the matmul operands, which are
in the dtype of s and v (as autocast's matmuls take them, the MLP's biases included); float32 inputs use
full-precision ("ieee") dots.

`TRITON_INTERPRET=1` runs the same kernels on CPU tensors (tests/test_mix_softmax_triton.py).
"""
from __future__ import annotations  # the kernels' `tl.constexpr` annotations stay strings without Triton

import functools
from typing import Any, List, NamedTuple, Optional, Tuple

import torch
from torch.utils.flop_counter import register_flop_formula

from .flops import attend_flops, head_mix_flops

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs (macOS): the matmul path in attention.py runs instead
    triton = tl = None

__all__ = ['available', 'compile_for', 'compile_launch', 'mix_noise_attend']

# Launch settings. The head-mix kernels': the fastest of a sweep on an H100 (one ViT-B/16 block of logits, bf16,
# batch 64; see docs/benchmarks.md, 2026-11-26), the forward's chunks per program chosen for about as many
# positions per program as it then took (a row of 197); the attention kernels': 64 x 64 tiles and 4 warps, the
# fewest instructions per position of the settings counted in sm_90 machine code (docs/benchmarks.md,
# 2026-11-28), not yet timed.
_MIX_FWD = {'BLOCK_J': 16, 'CHUNKS': 16, 'num_warps': 2}
_MIX_BWD = {'BLOCK_J': 64, 'num_warps': 4, 'programs_per_sm': 2}
_ATTEND_FWD = {'BLOCK_M': 64, 'BLOCK_N': 64, 'num_warps': 4}
_ATTEND_BWD = {'BLOCK_M': 64, 'BLOCK_N': 64, 'num_warps': 4}
_DELTA_ROWS = 64
_MAX_NUMEL = 2 ** 31  # the noise's Philox offsets are int32


def available(device: torch.device, numel: int) -> bool:
    """Whether `mix_noise_attend` can take logits of `numel` values on `device`: CUDA with Triton installed,
    and few enough values for int32 noise offsets."""
    return triton is not None and device.type == 'cuda' and numel < _MAX_NUMEL


def _leaky_relu(a, slope):
    """max(a, slope * a): LeakyReLU for 0 <= slope <= 1, two instructions per value where a select takes three."""
    return tl.maximum(a, a * slope)


def _box_muller(w_radius, w_angle):
    """Two normals, (r cos t, r sin t), from two Philox words as logit_noise.py defines them: r = sqrt(-2 ln u)
    with u = ((w_radius >> 9) + 0.5) / 2^23, t = 2 pi v with v = (w_angle >> 9) / 2^23; cos and sin as Cephes'
    float32 polynomials around the nearest quarter turn. Branch-free: Triton's tl.cos and tl.sin (libdevice's)
    have a slow path through local memory for large arguments, which t in [0, 2 pi) never needs: compiled for an
    H100 (sm_90) with them, the noise took 454 of the forward loop's 848 instructions, 214 of 603 with these."""
    u = ((w_radius >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2^-23
    v = (w_angle >> 9).to(tl.float32) * 1.1920928955078125e-07
    r = tl.sqrt(-2. * tl.log(u))
    k = tl.floor(v * 4. + 0.5)  # nearest quarter turn
    a = (v - k * 0.25) * 6.283185307179586  # in [-pi/4, pi/4]
    z = a * a
    sin = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * a + a
    cos = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.
    q = k.to(tl.int32)  # rotate (cos, sin) by q quarter turns: (c, s), (-s, c), (-c, -s), (s, -c)
    odd = (q & 1) == 1
    c = tl.where(odd, sin, cos)
    s = tl.where(odd, cos, sin)
    c = tl.where(((q + 1) & 2) != 0, -c, c)
    s = tl.where((q & 2) != 0, -s, s)
    return r * c, r * s


def _normals(seed, P, p0, HP: tl.constexpr, BLOCK_J: tl.constexpr):
    """eps for positions p0 to p0 + BLOCK_J of heads 0 to HP, an (HP, BLOCK_J) tile: position p of head h takes
    normal p % 4 of Philox counter h ceil(P / 4) + p // 4 (p0 a multiple of 4)."""
    hs = tl.arange(0, HP)
    q = hs[:, None] * tl.cdiv(P, 4) + (p0 // 4).to(tl.int32) + tl.arange(0, BLOCK_J // 4)[None, :]
    c0, c1, c2, c3 = tl.randint4x(seed, q)  # the counter's four 32-bit words
    n0, n1 = _box_muller(c0, c1)
    n2, n3 = _box_muller(c2, c3)
    # (HP, BLOCK_J // 4, 2, 2) -> position 4 t + 2 a + b takes normal 2 a + b of counter t, as documented
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), (HP, BLOCK_J))


def _load_mlp(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, H, F,
              HP: tl.constexpr, FP: tl.constexpr, FOLD: tl.constexpr, cdt: tl.constexpr):
    """The head MLP's weights zero-padded to (FP, HP), (FP, FP), (HP, FP) in the matmul dtype `cdt` (zero padding
    keeps the padded heads and features at 0 through the MLP), and its biases in float32 (HP and FP long).

    FOLD (H < HP and F < FP): the biases go into the padding instead, so that the dots add them: a 1 in input
    row H (the logits' masked loads fill with 1, see `_mix_fwd`) meets b1 in column H of w1, and w1[F, H] = 1 makes
    hidden unit F a constant 1 (LeakyReLU(1) = 1), which meets b2 and b3 in column F of w2 and w3 (w2[F, F] = 1
    keeps it 1 in the second layer). The bias adds, and in the backward the bias gradients' sums over keys, are
    then part of the dots (the weight gradients' columns H and F); the returned biases are then unused."""
    hs = tl.arange(0, HP)
    fs = tl.arange(0, FP)
    h_ok = hs < H
    f_ok = fs < F
    w1 = tl.load(w1_ptr + fs[:, None] * H + hs[None, :], mask=f_ok[:, None] & h_ok[None, :], other=0.)
    w2 = tl.load(w2_ptr + fs[:, None] * F + fs[None, :], mask=f_ok[:, None] & f_ok[None, :], other=0.)
    w3 = tl.load(w3_ptr + hs[:, None] * F + fs[None, :], mask=h_ok[:, None] & f_ok[None, :], other=0.)
    b1 = tl.load(b1_ptr + fs, mask=f_ok, other=0.).to(tl.float32)
    b2 = tl.load(b2_ptr + fs, mask=f_ok, other=0.).to(tl.float32)
    b3 = tl.load(b3_ptr + hs, mask=h_ok, other=0.).to(tl.float32)
    if FOLD:
        w1 = tl.where(hs[None, :] == H, tl.where(fs == F, 1., b1)[:, None], w1)
        w2 = tl.where(fs[None, :] == F, tl.where(fs == F, 1., b2)[:, None], w2)
        w3 = tl.where(fs[None, :] == F, b3[:, None], w3)
    return w1.to(cdt), b1, w2.to(cdt), b2, w3.to(cdt), b3


def _mlp_hidden(x, w1, b1, w2, b2, slope, cdt: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr):
    """The head MLP's two hidden layers on a logits tile x (HP, keys): pre-activations a1, a2 (float32) and
    activations h1, h2 (in `cdt`, as the next dots take them)."""
    a1 = tl.dot(w1, x, input_precision=PREC)
    if not FOLD:
        a1 += b1[:, None]
    h1 = _leaky_relu(a1, slope).to(cdt)
    a2 = tl.dot(w2, h1, input_precision=PREC)
    if not FOLD:
        a2 += b2[:, None]
    h2 = _leaky_relu(a2, slope).to(cdt)
    return a1, h1, a2, h2


def _mix_fwd(s_ptr, z_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
             P, H, F, seed, sigma, slope,
             HP: tl.constexpr, FP: tl.constexpr, BLOCK_J: tl.constexpr, CHUNKS: tl.constexpr,
             MIX: tl.constexpr, NOISE: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr):
    """z = s + g(s) + sigma eps over the P positions of each head, CHUNKS chunks of BLOCK_J per program."""
    hs = tl.arange(0, HP)
    js = tl.arange(0, BLOCK_J)
    h_ok = hs < H
    head = hs.to(tl.int64)[:, None] * P  # (HP, 1): where each head starts
    cdt = s_ptr.dtype.element_ty  # matmul operand dtype
    if MIX:
        w1, b1, w2, b2, w3, b3 = _load_mlp(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, H, F, HP, FP, FOLD, cdt)
    first = tl.program_id(0).to(tl.int64) * (CHUNKS * BLOCK_J)
    for c in range(CHUNKS):
        p0 = first + c * BLOCK_J
        p = p0 + js
        mask = h_ok[:, None] & (p < P)[None, :]
        offs = head + p[None, :]
        # masked values (padded heads, positions past P) load as 1 with FOLD: padded head row H's 1 is the one
        # the folded biases need; the other padded rows meet zero columns of w1, and nothing stores the rest
        x = tl.load(s_ptr + offs, mask=mask, other=1. if FOLD else 0.)
        y = x.to(tl.float32)
        if MIX:
            _, _, _, h2 = _mlp_hidden(x, w1, b1, w2, b2, slope, cdt, FOLD, PREC)
            y += tl.dot(w3, h2, input_precision=PREC)
            if not FOLD:
                y += b3[:, None]
        if NOISE:
            y += sigma * _normals(seed, P, p0, HP, BLOCK_J)
        tl.store(z_ptr + offs, y.to(z_ptr.dtype.element_ty), mask=mask)


def _attend_fwd(z_ptr, v_ptr, o_ptr, o32_ptr, lse_ptr, B, T_ALIGNS, K, H, D, ALIGN: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr, PREC: tl.constexpr):
    """o = softmax(z over the first K keys) @ v for BLOCK_M queries of one (head, image), flash attention's
    forward with the logits loaded instead of computed: o of the first K queries (the others are token padding)
    into (B, K, H, D), in v's dtype (the projection's input) and in float32 (the backward's), and per query the
    log-sum-exp of its logits (for the backward). T = T_ALIGNS * ALIGN tokens: ALIGN = 8 tells the compiler
    that rows start 16-byte aligned and end on a multiple of 8, for vector loads."""
    T = T_ALIGNS * ALIGN
    tiles = tl.cdiv(T, BLOCK_M)  # a 1-D grid, the query tiles of one (head, image) one after another
    hb = (tl.program_id(0) // tiles).to(tl.int64)  # h * B + b
    z_ptr += hb * T * T  # this (head, image)'s logits; offsets in it are int32
    v_ptr += hb * T * D
    i = (tl.program_id(0) % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    i_ok = i < T
    i_in = tl.minimum(i, T - 1)  # rows past T read row T - 1 (finite), and are not stored
    ds = tl.arange(0, DP)
    d_ok = ds < D
    cdt = v_ptr.dtype.element_ty
    m = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    for j0 in range(0, K, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        j_ok = j < K
        zt = tl.load(z_ptr + i_in[:, None] * T + j[None, :], mask=(j < T)[None, :], other=0.)
        vt = tl.load(v_ptr + j[:, None] * D + ds[None, :], mask=j_ok[:, None] & d_ok[None, :], other=0.)
        zt = tl.where(j_ok[None, :], zt.to(tl.float32), float('-inf'))
        m_new = tl.maximum(m, tl.max(zt, 1))
        p = tl.exp(zt - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(cdt), vt, input_precision=PREC)
        m = m_new
    h = hb // B
    b = hb % B
    acc = acc / l[:, None]
    offs = ((b * K + i[:, None]) * H + h) * D + ds[None, :]
    real = (i < K)[:, None] & d_ok[None, :]
    tl.store(o_ptr + offs, acc.to(o_ptr.dtype.element_ty), mask=real)
    tl.store(o32_ptr + offs, acc, mask=real)
    tl.store(lse_ptr + hb * T + i, m + tl.log(l), mask=i_ok)


def _attend_delta(go_ptr, o32_ptr, delta_ptr, R, D, BLOCK_R: tl.constexpr, DP: tl.constexpr):
    """delta = do . o in float32 for BLOCK_R rows (query, head) of o's gradient do (in v's dtype) and of o in
    float32: the sum that flash attention's backward subtracts."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    ds = tl.arange(0, DP)
    mask = (r < R)[:, None] & (ds < D)[None, :]
    offs = r[:, None] * D + ds[None, :]
    go = tl.load(go_ptr + offs, mask=mask, other=0.).to(tl.float32)
    o = tl.load(o32_ptr + offs, mask=mask, other=0.)
    tl.store(delta_ptr + r, tl.sum(go * o, 1), mask=r < R)


def _attend_bwd(z_ptr, v_ptr, lse_ptr, go_ptr, delta_ptr, gz_ptr, dz_ptr, dv_ptr, B, T_ALIGNS, K, H, D,
                ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                HAS_GZ: tl.constexpr, PREC: tl.constexpr):
    """For BLOCK_N keys of one (head, image), over all queries: the logits' gradient dz = p (dp - delta) (+ the
    next block's gradient of z), with p recomputed from z and the log-sum-exp, dp = do @ v^T and delta = do . o
    per query; and dv = p^T @ do. Every (query, key) is one program's, so nothing is summed across programs.
    T and ALIGN as in `_attend_fwd`."""
    T = T_ALIGNS * ALIGN
    tiles = tl.cdiv(T, BLOCK_N)  # a 1-D grid, as in `_attend_fwd`
    hb = (tl.program_id(0) // tiles).to(tl.int64)
    h = hb // B
    b = hb % B
    z_ptr += hb * T * T  # this (head, image)'s logits, values and gradients; offsets in them are int32
    gz_ptr += hb * T * T
    dz_ptr += hb * T * T
    v_ptr += hb * T * D
    dv_ptr += hb * T * D
    lse_ptr += hb * T
    go_ptr += (b * K * H + h) * D  # (B, K, H, D): query i at i H D; the padding queries past K have none
    delta_ptr += b * K * H + h  # (B, K, H)
    j = (tl.program_id(0) % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    j_ok = j < T
    j_in = j < K  # keys past K are out of the softmax: p = 0 there
    ds = tl.arange(0, DP)
    d_ok = ds < D
    cdt = v_ptr.dtype.element_ty
    vt = tl.load(v_ptr + j[:, None] * D + ds[None, :], mask=j_ok[:, None] & d_ok[None, :], other=0.)
    dv = tl.zeros([BLOCK_N, DP], tl.float32)
    for i0 in range(0, T, BLOCK_M):
        i = i0 + tl.arange(0, BLOCK_M)
        i_ok = i < T
        tile = i[:, None] * T + j[None, :]
        t_ok = i_ok[:, None] & j_ok[None, :]
        zt = tl.load(z_ptr + tile, mask=t_ok, other=0.).to(tl.float32)
        lse = tl.load(lse_ptr + i, mask=i_ok, other=0.)
        p = tl.where(j_in[None, :], tl.exp(zt - lse[:, None]), 0.)
        i_real = i < K  # a padding query's do is 0 (nothing reads its o), so its dz is the next block's alone
        do = tl.load(go_ptr + i[:, None] * (H * D) + ds[None, :], mask=i_real[:, None] & d_ok[None, :], other=0.)
        delta = tl.load(delta_ptr + i * H, mask=i_real, other=0.)
        dp = tl.dot(do, tl.trans(vt), input_precision=PREC)
        dz = p * (dp - delta[:, None])
        if HAS_GZ:
            dz += tl.load(gz_ptr + tile, mask=t_ok, other=0.).to(tl.float32)
        tl.store(dz_ptr + tile, dz.to(dz_ptr.dtype.element_ty), mask=t_ok)
        dv += tl.dot(tl.trans(p.to(cdt)), do, input_precision=PREC)
    tl.store(dv_ptr + j[:, None] * D + ds[None, :], dv.to(dv_ptr.dtype.element_ty), mask=j_ok[:, None] & d_ok[None, :])


def _mix_bwd(dz_ptr, s_ptr, ds_ptr, part_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
             P, H, F, slope,
             HP: tl.constexpr, FP: tl.constexpr, BLOCK_J: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr):
    """ds = dz + J_g(s)^T dz over chunks of BLOCK_J positions (a persistent grid), the MLP recomputed from s;
    the weight gradients summed in float32 per program into `part_ptr`."""
    pid = tl.program_id(0)
    hs = tl.arange(0, HP)
    fs = tl.arange(0, FP)
    js = tl.arange(0, BLOCK_J)
    h_ok = hs < H
    head = hs.to(tl.int64)[:, None] * P
    cdt = s_ptr.dtype.element_ty
    w1, b1, w2, b2, w3, _ = _load_mlp(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, H, F, HP, FP, FOLD, cdt)
    w1t, w2t, w3t = tl.trans(w1), tl.trans(w2), tl.trans(w3)
    dw1 = tl.zeros([FP, HP], tl.float32)
    dw2 = tl.zeros([FP, FP], tl.float32)
    dw3 = tl.zeros([HP, FP], tl.float32)
    db1 = tl.zeros([FP], tl.float32)
    db2 = tl.zeros([FP], tl.float32)
    db3 = tl.zeros([HP], tl.float32)
    for c in range(pid, tl.cdiv(P, BLOCK_J), tl.num_programs(0)):
        p = c * BLOCK_J + js
        mask = h_ok[:, None] & (p < P)[None, :]
        offs = head + p[None, :]
        dz = tl.load(dz_ptr + offs, mask=mask, other=0.)  # 0 where masked: no weight gradient from there
        x = tl.load(s_ptr + offs, mask=mask, other=1. if FOLD else 0.)  # 1 where masked, as in _mix_fwd
        a1, h1, a2, h2 = _mlp_hidden(x, w1, b1, w2, b2, slope, cdt, FOLD, PREC)
        d2 = tl.dot(w3t, dz, input_precision=PREC)
        d2 = tl.where(a2 > 0, d2, d2 * slope)
        d2c = d2.to(cdt)
        d1 = tl.dot(w2t, d2c, input_precision=PREC)
        d1 = tl.where(a1 > 0, d1, d1 * slope)
        d1c = d1.to(cdt)
        ds = dz.to(tl.float32) + tl.dot(w1t, d1c, input_precision=PREC)
        dw3 += tl.dot(dz, tl.trans(h2), input_precision=PREC)
        dw2 += tl.dot(d2c, tl.trans(h1), input_precision=PREC)
        dw1 += tl.dot(d1c, tl.trans(x), input_precision=PREC)
        if not FOLD:  # else the dots above summed them, in column H of dw1 and F of dw2, dw3
            db3 += tl.sum(dz.to(tl.float32), 1)
            db2 += tl.sum(d2, 1)
            db1 += tl.sum(d1, 1)
        tl.store(ds_ptr + offs, ds.to(ds_ptr.dtype.element_ty), mask=mask)

    out = part_ptr + pid * (2 * FP * HP + FP * FP + 2 * FP + HP)  # this program's sums, one after another
    tl.store(out + fs[:, None] * HP + hs[None, :], dw1)
    out += FP * HP
    tl.store(out + fs[:, None] * FP + fs[None, :], dw2)
    out += FP * FP
    tl.store(out + hs[:, None] * FP + fs[None, :], dw3)
    if not FOLD:
        out += HP * FP
        tl.store(out + fs, db1)
        tl.store(out + FP + fs, db2)
        tl.store(out + 2 * FP + hs, db3)


class _Kernels(NamedTuple):
    """The jitted kernels, by their names here without the underscore."""
    mix_fwd: Any
    attend_fwd: Any
    attend_delta: Any
    attend_bwd: Any
    mix_bwd: Any


@functools.lru_cache(maxsize=None)
def _kernels():
    """The jitted kernels (`_Kernels`), or None without Triton. Built on first use, so that a TRITON_INTERPRET set
    by then (the tests) takes effect; the helpers they call by name are jitted in this module's namespace then,
    the same way."""
    if triton is None:
        return None
    for helper in ('_leaky_relu', '_box_muller', '_normals', '_load_mlp', '_mlp_hidden'):
        fn = globals()[helper]
        globals()[helper] = triton.jit(getattr(fn, 'fn', fn))  # `.fn`: the Python function, if jitted already
    return _Kernels(*(triton.jit(k) for k in (_mix_fwd, _attend_fwd, _attend_delta, _attend_bwd, _mix_bwd)))


def compile_for(kernel, constexprs: dict, num_warps: int, dtype: str = 'bf16', arch: int = 90,
                ints: Optional[dict] = None):
    """Compile `kernel` (one of `_kernels()`) for an NVIDIA GPU of compute capability `arch` (90: H100) down to
    machine code, with no GPU, specialised as a launch would be: the logits, v, o and o's gradient in `dtype`
    ('bf16', 'fp16', 'fp32'); the MLP's weights, o's float32 copy, the log-sum-exp, delta and the partial sums
    in float32; every pointer 16-byte aligned (as torch allocates); `constexprs` naming every
    constexpr argument; `ints` the values of integer arguments, those divisible by 16 marked so (as `triton.jit`
    marks them). For tests and machine-code counts (docs/results/2026-11-28-attend); the launch path compiles
    through `triton.jit`."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    float32 = {'w1_ptr', 'b1_ptr', 'w2_ptr', 'b2_ptr', 'w3_ptr', 'b3_ptr', 'part_ptr', 'o32_ptr', 'lse_ptr',
               'delta_ptr'}
    signature, aligned = {}, []
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            signature[name] = '*fp32' if name in float32 else '*' + dtype
            aligned.append(i)
        else:
            signature[name] = 'fp32' if name in ('sigma', 'slope') else 'i32'
            if (ints or {}).get(name, 1) % 16 == 0:
                aligned.append(i)
    src = ASTSource(kernel, signature, {(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
                    {(i,): [['tt.divisibility', 16]] for i in aligned})
    return triton.compile(src, target=GPUTarget('cuda', arch, 32), options={'num_warps': num_warps})


def compile_launch(kernel, settings: dict, dtype: str = 'bf16', ints: Optional[dict] = None, **constexprs):
    """`compile_for` with a launch-settings dict of this module (`_MIX_FWD`, ...): its num_warps, those of its
    keys that are the kernel's constexprs (the others, such as programs_per_sm, shape the grid), and PREC as the
    launch picks it for `dtype` (`_precision`); `constexprs` the rest."""
    chosen = {k: v for k, v in settings.items() if k in kernel.arg_names}
    if 'PREC' in kernel.arg_names:
        chosen['PREC'] = 'ieee' if dtype == 'fp32' else 'tf32'
    return compile_for(kernel, {**chosen, **constexprs}, settings['num_warps'], dtype=dtype, ints=ints)


def _pow2(n: int) -> int:
    """Padded size of a tensor-core dot dimension: a power of two, at least 16."""
    return max(16, 1 << (n - 1).bit_length())


def _mix_shape(s: torch.Tensor, w1: Optional[torch.Tensor]):
    """H, positions per head P (B * N * N), hidden F (0: no MLP), their padded sizes HP and FP, and whether
    there are MLP biases and they fit into the padding (FOLD, see _load_mlp): for H = 3, 6, 12, not for ViT-L's
    16 heads."""
    H = s.shape[0]
    F = 0 if w1 is None else w1.shape[0]
    HP, FP = _pow2(H), _pow2(max(F, 1))
    return H, s.numel() // H, F, HP, FP, H < HP and 0 < F < FP


def _align(tokens: int) -> int:
    """8 where the token count is a multiple of 8 (always, on NestedAttention's path), else 1."""
    return 8 if tokens % 8 == 0 else 1


def _precision(s: torch.Tensor) -> str:
    return 'ieee' if s.dtype == torch.float32 else 'tf32'  # 'tf32' is ignored by bf16/fp16 dots


def _weights(w: List[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    return [t.detach().contiguous() for t in w]


def _check(s: torch.Tensor, v: torch.Tensor, slope: float, n_keys: Optional[int]) -> int:
    """The keys in the softmax, after checking the shapes: s (H, B, T, T) and v (H, B, T, D), contiguous."""
    if not 0 <= slope <= 1:
        raise ValueError(f'the fused kernels take a LeakyReLU slope in [0, 1] (max(a, slope a)), got {slope}')
    H, B, T, T2 = s.shape
    if T2 != T or v.shape[:3] != (H, B, T) or not (s.is_contiguous() and v.is_contiguous()):
        raise ValueError(f'expected contiguous logits (H, B, T, T) and values (H, B, T, D), got {tuple(s.shape)} '
                         f'and {tuple(v.shape)}')
    K = T if n_keys is None else n_keys
    if not 0 < K <= T:
        raise ValueError(f'n_keys must be in [1, {T}], got {n_keys}')
    return K


@torch.library.custom_op('neatt::mix_noise_attend', mutates_args=())
def mix_noise_attend(s: torch.Tensor, v: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor],
                     w2: Optional[torch.Tensor], b2: Optional[torch.Tensor], w3: Optional[torch.Tensor],
                     b3: Optional[torch.Tensor], sigma: float, slope: float,
                     n_keys: Optional[int] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, o, o32, lse) of the module docstring for head-major logits s (H, B, T, T) and values v (H, B, T, D);
    `w1..b3` the head MLP's fc1..fc3 (all None: no mix), sigma 0: no noise. `n_keys` = N < T: the tokens past
    N are padding (see attention.NestedAttention): the softmax takes only the first N keys, and o only the first
    N queries. z is computed for all T.

    o (B, N, H, D) is in v's dtype, so that o.view(B, N, H * D) is the projection's input as it is: no cast
    and no copy of the real rows. o32 (the same in float32) and lse (H, B, T) are for the backward, and take no
    gradient.

    The noise's seed is one draw from torch's global CPU generator, so `torch.manual_seed` and activation
    checkpointing replay it. It is drawn on the host at each call, so a CUDA graph (torch.compile's
    mode='reduce-overhead' or 'max-autotune') would replay one seed: the trainer refuses those modes while the
    model has noise (`--torchcompile-mode`).

    A custom op, so that `torch.compile` keeps the kernels and their backward as they are.
    """
    K = _check(s, v, slope, n_keys)
    k = _kernels()
    H, B, T, D = v.shape
    _, P, F, HP, FP, fold = _mix_shape(s, w1)
    mix, noise = w1 is not None, sigma > 0
    if mix or noise:
        seed = int(torch.randint(0, 2 ** 31 - 1, ())) if noise else 0
        z = torch.empty_like(s)
        w = _weights([w1, b1, w2, b2, w3, b3]) if mix else [s] * 6  # unread placeholders without a mix
        block_j, chunks = _MIX_FWD['BLOCK_J'], _MIX_FWD['CHUNKS']
        k.mix_fwd[(triton.cdiv(P, block_j * chunks),)](
            s, z, *w, P, H, F, seed, sigma, slope, HP=HP, FP=FP, BLOCK_J=block_j, CHUNKS=chunks, MIX=mix,
            NOISE=noise, FOLD=fold, PREC=_precision(s), num_warps=_MIX_FWD['num_warps'])
    else:
        z = s.clone()  # a custom op's output may not alias its input
    o = v.new_empty(B, K, H, D)
    o32 = torch.empty(B, K, H, D, device=v.device, dtype=torch.float32)
    lse = torch.empty(H, B, T, device=v.device, dtype=torch.float32)
    block_m, block_n = _ATTEND_FWD['BLOCK_M'], _ATTEND_FWD['BLOCK_N']
    k.attend_fwd[(triton.cdiv(T, block_m) * H * B,)](  # 1-D: a grid's y extent stops at 65535
        z, v, o, o32, lse, B, T // _align(T), K, H, D, ALIGN=_align(T), BLOCK_M=block_m, BLOCK_N=block_n,
        DP=_pow2(D), PREC=_precision(v), num_warps=_ATTEND_FWD['num_warps'])
    return z, o, o32, lse


@mix_noise_attend.register_fake
def _(s, v, w1, b1, w2, b2, w3, b3, sigma, slope, n_keys=None):
    H, B, T, D = v.shape
    K = T if n_keys is None else n_keys
    return (torch.empty_like(s), v.new_empty((B, K, H, D)), v.new_empty((B, K, H, D), dtype=torch.float32),
            v.new_empty((H, B, T), dtype=torch.float32))


@torch.library.custom_op('neatt::mix_noise_attend_backward', mutates_args=())
def mix_noise_attend_backward(grad_z: Optional[torch.Tensor], grad_o: torch.Tensor, s: torch.Tensor,
                              z: torch.Tensor, v: torch.Tensor, o32: torch.Tensor, lse: torch.Tensor,
                              w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor],
                              b2: Optional[torch.Tensor], w3: Optional[torch.Tensor], b3: Optional[torch.Tensor],
                              slope: float, n_keys: Optional[int] = None) -> List[torch.Tensor]:
    """[ds, dv] without a mix, else [ds, dv, dw1, db1, dw2, db2, dw3, db3] (weight grads in float32)."""
    K = _check(s, v, slope, n_keys)
    k = _kernels()
    H, B, T, D = v.shape
    # delta from o's gradient in v's dtype, the values the dots take, and o in float32, so that in bf16 too
    # p (dp - delta) sums to 0 over keys as it should
    go, delta = grad_o.contiguous(), torch.empty(B, K, H, device=v.device, dtype=torch.float32)
    k.attend_delta[(triton.cdiv(B * K * H, _DELTA_ROWS),)](go, o32, delta, B * K * H, D, BLOCK_R=_DELTA_ROWS,
                                                          DP=_pow2(D))
    dz = torch.empty_like(z)
    dv = torch.empty_like(v)
    block_m, block_n = _ATTEND_BWD['BLOCK_M'], _ATTEND_BWD['BLOCK_N']
    k.attend_bwd[(triton.cdiv(T, block_n) * H * B,)](
        z, v, lse, go, delta, z if grad_z is None else grad_z.contiguous(), dz, dv, B, T // _align(T), K, H, D,
        ALIGN=_align(T), BLOCK_M=block_m, BLOCK_N=block_n, DP=_pow2(D), HAS_GZ=grad_z is not None, PREC=_precision(v),
        num_warps=_ATTEND_BWD['num_warps'])
    if w1 is None:
        return [dz, dv]  # z = s + sigma eps: ds = dz
    _, P, F, HP, FP, fold = _mix_shape(s, w1)
    ds = torch.empty_like(s)
    grid = min(triton.cdiv(P, _MIX_BWD['BLOCK_J']), _MIX_BWD['programs_per_sm'] * _multiprocessors(s.device))
    part = torch.zeros(grid, 2 * FP * HP + FP * FP + 2 * FP + HP, device=s.device)
    k.mix_bwd[(grid,)](dz, s, ds, part, *_weights([w1, b1, w2, b2, w3, b3]), P, H, F, slope, HP=HP, FP=FP,
                       BLOCK_J=_MIX_BWD['BLOCK_J'], FOLD=fold, PREC=_precision(s), num_warps=_MIX_BWD['num_warps'])
    dw1, dw2, dw3, db1, db2, db3 = part.sum(0).split([FP * HP, FP * FP, HP * FP, FP, FP, HP])
    dw1, dw2, dw3 = dw1.view(FP, HP), dw2.view(FP, FP), dw3.view(HP, FP)
    if fold:  # the bias gradients are the columns that met the constant 1s (see _load_mlp)
        db1, db2, db3 = dw1[:, H], dw2[:, F], dw3[:, F]
    grads = [dw1[:F, :H], db1[:F], dw2[:F, :F], db2[:F], dw3[:H, :F], db3[:H]]
    return [ds, dv] + [g.clone() for g in grads]  # a custom op's outputs may not alias each other


@mix_noise_attend_backward.register_fake
def _(grad_z, grad_o, s, z, v, o32, lse, w1, b1, w2, b2, w3, b3, slope, n_keys=None):
    if w1 is None:
        return [torch.empty_like(s), torch.empty_like(v)]
    f32 = {'dtype': torch.float32, 'device': s.device}
    F, H = w1.shape
    return [torch.empty_like(s), torch.empty_like(v), s.new_empty((F, H), **f32), s.new_empty((F,), **f32),
            s.new_empty((F, F), **f32), s.new_empty((F,), **f32), s.new_empty((H, F), **f32),
            s.new_empty((H,), **f32)]


def _multiprocessors(device: torch.device) -> int:
    if device.type != 'cuda':
        return 1  # TRITON_INTERPRET on CPU tensors
    return torch.cuda.get_device_properties(device).multi_processor_count


def _setup_context(ctx, inputs, output):
    s, v, w1, b1, w2, b2, w3, b3, sigma, slope, n_keys = inputs
    z, o, o32, lse = output
    ctx.set_materialize_grads(False)  # an unused z (the last block's) gives None, not a tensor of zeros to read
    ctx.mark_non_differentiable(o32, lse)
    ctx.save_for_backward(s, z, v, o32, lse, w1, b1, w2, b2, w3, b3)
    ctx.slope, ctx.n_keys = slope, n_keys
    ctx.weight_dtypes = [None if w is None else w.dtype for w in (w1, b1, w2, b2, w3, b3)]


def _backward(ctx, grad_z, grad_o, grad_o32, grad_lse):
    s, z, v, o32, lse, w1, b1, w2, b2, w3, b3 = ctx.saved_tensors
    if grad_o is None:  # o unused: only z's gradient flows back
        grad_o = torch.zeros_like(o32, dtype=v.dtype)
    grads = mix_noise_attend_backward(grad_z, grad_o, s, z, v, o32, lse, w1, b1, w2, b2, w3, b3, ctx.slope,
                                      ctx.n_keys)
    ds, dv, weight_grads = grads[0], grads[1], grads[2:] or [None] * 6
    weight_grads = [g if g is None else g.to(dt) for g, dt in zip(weight_grads, ctx.weight_dtypes)]
    return (ds, dv, *weight_grads, None, None, None)


mix_noise_attend.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.neatt.mix_noise_attend)
def _forward_flops(s_shape, v_shape, w1_shape, *args, **kwargs) -> int:
    return head_mix_flops(s_shape, w1_shape) + attend_flops(s_shape, v_shape)


@register_flop_formula(torch.ops.neatt.mix_noise_attend_backward)
def _backward_flops(grad_z_shape, grad_o_shape, s_shape, z_shape, v_shape, o32_shape, lse_shape, w1_shape, *args,
                    **kwargs) -> int:
    return head_mix_flops(s_shape, w1_shape, backward=True) + attend_flops(s_shape, v_shape, backward=True)
