"""The Ne-Att logits' head mix, noise and softmax on a GPU, fused into one Triton kernel per direction.

Per block, on head-major logits s (H, B, N, N), with g the cross-head MLP (attention.HeadMix) and eps ~ N(0, 1)::

    z    = s + g(s) + sigma * eps        (returned: the next block chains it)
    attn = softmax(z, over keys)         (returned, in the dtype of v)

Why hand-written: as matmuls, g writes and re-reads two (4H, B*N*N) hidden activations per block, and the noise
and softmax are more passes over (H, B, N, N) tensors. Measured on an H100 (ViT-B/16, bf16, batch 64, eager):
Ne-Att took 2.9x vanilla's step, most of it in these memory-bound passes. Here one program takes one query row
(b, i) for all H heads, keys in chunks of `BLOCK_J`: it loads s once, runs the MLP per key on tensor cores
(features on the rows of a (4H, BLOCK_J) tile, H and 4H padded to powers of two, at least 16), adds the noise
(`_box_muller`: the generator of logit_noise.py, four normals per Philox counter, a counter per (head, row, 4 keys),
seeded by one draw from torch's generator per call), stores z and keeps an online max/sum per head; a second
sweep over the row writes attn. Nothing else goes to memory.

The backward recomputes the MLP from s (saved instead of the hidden activations: H instead of 9H values per
position) and goes through the softmax, the MLP and the residual in one sweep per row. Weight gradients are
summed in float32 registers per program (a persistent grid) and the programs' partial sums added in torch, in
program order, so results do not depend on scheduling. Where H and 4H leave padding (every model but ViT-L's 16
heads), the MLP's biases ride in it (`_load_mlp`): the dots add them and, in the backward, sum their gradients,
which removed three reductions over keys per chunk and most spills (docs/benchmarks.md, 2026-11-28).

z is stored in the dtype of s (bf16 under autocast, as the matmul path gives it); the softmax reads z as
stored, so that it sees what the next block sees. The math is in float32 except the matmul operands, which are
in the dtype of s (as autocast's matmuls take them, biases included); float32 logits use full-precision ("ieee")
dots.

`TRITON_INTERPRET=1` runs the same kernels on CPU tensors (tests/test_mix_softmax_triton.py).
"""
from __future__ import annotations  # the kernels' `tl.constexpr` annotations stay strings without Triton

import functools
from typing import List, Optional, Tuple

import torch
from torch.utils.flop_counter import register_flop_formula

from .flops import head_mix_flops

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs (macOS): the matmul path in attention.py runs instead
    triton = tl = None

__all__ = ['available', 'compile_for', 'mix_noise_softmax']

# Launch settings, the fastest of a sweep on an H100 (one ViT-B/16 block of logits, bf16, batch 64; see
# docs/benchmarks.md): keys per chunk, warps, and the backward's persistent programs per multiprocessor.
_BLOCK_J = (16, 64)  # forward, backward
_NUM_WARPS = (2, 4)
_PROGRAMS_PER_SM = 2
_MAX_NUMEL = 2 ** 31  # the noise's Philox offsets are int32


def available(device: torch.device, numel: int) -> bool:
    """Whether `mix_noise_softmax` can take logits of `numel` values on `device`: CUDA with Triton installed,
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


def _load_mlp(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, H, F,
              HP: tl.constexpr, FP: tl.constexpr, FOLD: tl.constexpr, cdt: tl.constexpr):
    """The head MLP's weights zero-padded to (FP, HP), (FP, FP), (HP, FP) in the matmul dtype `cdt` (zero padding
    keeps the padded heads and features at 0 through the MLP), and its biases in float32 (HP and FP long).

    FOLD (H < HP and F < FP): the biases go into the padding instead, so that the dots add them: a 1 in input
    row H (the logits' masked loads fill with 1, see `_fwd`) meets b1 in column H of w1, and w1[F, H] = 1 makes
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


def _fwd(s_ptr, z_ptr, attn_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
         R, N, K, H, F, seed, sigma, slope,
         HP: tl.constexpr, FP: tl.constexpr, BLOCK_J: tl.constexpr,
         MIX: tl.constexpr, NOISE: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    hs = tl.arange(0, HP)
    js = tl.arange(0, BLOCK_J)
    h_ok = hs < H
    base = hs.to(tl.int64)[:, None] * R * N + r * N  # (HP, 1): where row r of each head starts
    cdt = s_ptr.dtype.element_ty  # matmul operand dtype
    if MIX:
        w1, b1, w2, b2, w3, b3 = _load_mlp(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, H, F, HP, FP, FOLD, cdt)

    m = tl.full([HP], float('-inf'), tl.float32)
    l = tl.zeros([HP], tl.float32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + js
        mask = h_ok[:, None] & (j < N)[None, :]
        offs = base + j[None, :]
        # masked values (padded heads, keys past N) load as 1 with FOLD: padded head row H's 1 is the one the
        # folded biases need; the other padded rows meet zero columns of w1, and keys past N are neither stored
        # nor in the softmax (nor, in the backward, where their gradient is 0, in any weight gradient)
        x = tl.load(s_ptr + offs, mask=mask, other=1. if FOLD else 0.)
        y = x.to(tl.float32)
        if MIX:
            _, _, _, h2 = _mlp_hidden(x, w1, b1, w2, b2, slope, cdt, FOLD, PREC)
            y += tl.dot(w3, h2, input_precision=PREC)
            if not FOLD:
                y += b3[:, None]
        if NOISE:  # key j of row (h, r): normal j % 4 of Philox counter (h R + r) ceil(N / 4) + j // 4
            q = (hs[:, None] * R + r) * tl.cdiv(N, 4) + (j0 // 4) + tl.arange(0, BLOCK_J // 4)[None, :]
            c0, c1, c2, c3 = tl.randint4x(seed, q.to(tl.int32))  # the counter's four 32-bit words
            n0, n1 = _box_muller(c0, c1)
            n2, n3 = _box_muller(c2, c3)
            # (HP, BLOCK_J // 4, 2, 2) -> key 4 t + 2 a + b takes normal 2 a + b of counter t, as documented
            y += sigma * tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), (HP, BLOCK_J))
        zq = y.to(z_ptr.dtype.element_ty)
        tl.store(z_ptr + offs, zq, mask=mask)
        # padded heads keep finite stats (0); keys past K, and the tile's padding, drop out (-inf)
        zf = tl.where((j < K)[None, :], zq.to(tl.float32), float('-inf'))
        m_new = tl.maximum(m, tl.max(zf, 1))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(zf - m_new[:, None]), 1)
        m = m_new

    tl.debug_barrier()  # the sweep below reads z stored by other threads of this program
    inv_l = 1. / l
    for j0 in range(0, N, BLOCK_J):
        j = j0 + js
        mask = h_ok[:, None] & (j < N)[None, :]
        offs = base + j[None, :]
        zf = tl.load(z_ptr + offs, mask=mask, other=0.).to(tl.float32)
        p = tl.where((j < K)[None, :], tl.exp(zf - m[:, None]) * inv_l[:, None], 0.)
        tl.store(attn_ptr + offs, p.to(attn_ptr.dtype.element_ty), mask=mask)


def _bwd(gz_ptr, ga_ptr, s_ptr, attn_ptr, ds_ptr, part_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
         R, N, H, F, slope,
         HP: tl.constexpr, FP: tl.constexpr, BLOCK_J: tl.constexpr,
         MIX: tl.constexpr, HAS_GZ: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    hs = tl.arange(0, HP)
    fs = tl.arange(0, FP)
    js = tl.arange(0, BLOCK_J)
    h_ok = hs < H
    cdt = s_ptr.dtype.element_ty
    if MIX:
        w1, b1, w2, b2, w3, _ = _load_mlp(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, H, F, HP, FP, FOLD, cdt)
        w1t, w2t, w3t = tl.trans(w1), tl.trans(w2), tl.trans(w3)
        dw1 = tl.zeros([FP, HP], tl.float32)
        dw2 = tl.zeros([FP, FP], tl.float32)
        dw3 = tl.zeros([HP, FP], tl.float32)
        db1 = tl.zeros([FP], tl.float32)
        db2 = tl.zeros([FP], tl.float32)
        db3 = tl.zeros([HP], tl.float32)

    for r in range(pid, R, tl.num_programs(0)):
        base = hs.to(tl.int64)[:, None] * R * N + r * N  # r * N < numel / H < 2^31
        rowdot = tl.zeros([HP], tl.float32)  # sum_j attn * d attn, the softmax backward's row term
        for j0 in range(0, N, BLOCK_J):
            j = j0 + js
            mask = h_ok[:, None] & (j < N)[None, :]
            offs = base + j[None, :]
            p = tl.load(attn_ptr + offs, mask=mask, other=0.).to(tl.float32)
            g = tl.load(ga_ptr + offs, mask=mask, other=0.).to(tl.float32)
            rowdot += tl.sum(p * g, 1)
        for j0 in range(0, N, BLOCK_J):
            j = j0 + js
            mask = h_ok[:, None] & (j < N)[None, :]
            offs = base + j[None, :]
            p = tl.load(attn_ptr + offs, mask=mask, other=0.).to(tl.float32)
            g = tl.load(ga_ptr + offs, mask=mask, other=0.).to(tl.float32)
            dz = p * (g - rowdot[:, None])
            if HAS_GZ:
                dz += tl.load(gz_ptr + offs, mask=mask, other=0.).to(tl.float32)
            ds = dz
            if MIX:
                x = tl.load(s_ptr + offs, mask=mask, other=1. if FOLD else 0.)  # 1 where masked, as in _fwd
                a1, h1, a2, h2 = _mlp_hidden(x, w1, b1, w2, b2, slope, cdt, FOLD, PREC)
                dzc = dz.to(cdt)
                d2 = tl.dot(w3t, dzc, input_precision=PREC)
                d2 = tl.where(a2 > 0, d2, d2 * slope)
                d2c = d2.to(cdt)
                d1 = tl.dot(w2t, d2c, input_precision=PREC)
                d1 = tl.where(a1 > 0, d1, d1 * slope)
                d1c = d1.to(cdt)
                ds += tl.dot(w1t, d1c, input_precision=PREC)
                dw3 += tl.dot(dzc, tl.trans(h2), input_precision=PREC)
                dw2 += tl.dot(d2c, tl.trans(h1), input_precision=PREC)
                dw1 += tl.dot(d1c, tl.trans(x), input_precision=PREC)
                if not FOLD:  # else the dots above summed them, in column H of dw1 and F of dw2, dw3
                    db3 += tl.sum(dz, 1)
                    db2 += tl.sum(d2, 1)
                    db1 += tl.sum(d1, 1)
            tl.store(ds_ptr + offs, ds.to(ds_ptr.dtype.element_ty), mask=mask)

    if MIX:  # this program's partial sums, padded shapes, one after another
        out = part_ptr + pid * (2 * FP * HP + FP * FP + 2 * FP + HP)
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


@functools.lru_cache(maxsize=None)
def _kernels():
    """(forward, backward) jitted kernels, or None without Triton. Built on first use, so that a TRITON_INTERPRET
    set by then (the tests) takes effect; the helpers they call by name are jitted in this module's namespace then,
    the same way."""
    if triton is None:
        return None
    # the helpers that the kernels call by name
    for helper in ('_leaky_relu', '_box_muller', '_load_mlp', '_mlp_hidden'):
        fn = globals()[helper]
        globals()[helper] = triton.jit(getattr(fn, 'fn', fn))  # `.fn`: the Python function, if jitted already
    return triton.jit(_fwd), triton.jit(_bwd)


def compile_for(kernel, constexprs: dict, num_warps: int, dtype: str = 'bf16', arch: int = 90):
    """Compile `kernel` (one of `_kernels()`) for an NVIDIA GPU of compute capability `arch` (90: H100) down to
    machine code, with no GPU: the logits in `dtype` ('bf16', 'fp16', 'fp32'), the MLP's weights and the partial
    sums in float32, `constexprs` naming every constexpr argument. For tests and machine-code counts
    (docs/results/2026-11-27-sass); the launch path compiles through `triton.jit` as usual."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    float32 = {'w1_ptr', 'b1_ptr', 'w2_ptr', 'b2_ptr', 'w3_ptr', 'b3_ptr', 'part_ptr'}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            signature[name] = '*fp32' if name in float32 else '*' + dtype
        else:
            signature[name] = 'fp32' if name in ('sigma', 'slope') else 'i32'
    src = ASTSource(kernel, signature, {(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget('cuda', arch, 32), options={'num_warps': num_warps})


def _pow2(n: int) -> int:
    """Padded size of a tensor-core dot dimension: a power of two, at least 16."""
    return max(16, 1 << (n - 1).bit_length())


def _launch_shape(s: torch.Tensor, w1: Optional[torch.Tensor]):
    """H, rows R (B * N queries), keys N, hidden F (0: no MLP), their padded sizes HP and FP, and whether
    there are MLP biases and they fit into the padding (FOLD, see _load_mlp): for H = 3, 6, 12, not for ViT-L's
    16 heads."""
    H, N = s.shape[0], s.shape[-1]
    F = 0 if w1 is None else w1.shape[0]
    HP, FP = _pow2(H), _pow2(max(F, 1))
    return H, s.numel() // (H * N), N, F, HP, FP, H < HP and 0 < F < FP


def _precision(s: torch.Tensor) -> str:
    return 'ieee' if s.dtype == torch.float32 else 'tf32'  # 'tf32' is ignored by bf16/fp16 dots


def _weights(w: List[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    return [t.detach().contiguous() for t in w]


@torch.library.custom_op('neatt::mix_noise_softmax', mutates_args=())
def mix_noise_softmax(s: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor],
                      w2: Optional[torch.Tensor], b2: Optional[torch.Tensor], w3: Optional[torch.Tensor],
                      b3: Optional[torch.Tensor], sigma: float, slope: float, attn_dtype: torch.dtype,
                      n_keys: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z, attn) of the module docstring for contiguous head-major logits s (H, ..., N); `w1..b3` the head
    MLP's fc1..fc3 (all None: no mix), sigma 0: no noise. `n_keys` < N: the softmax takes only the first
    n_keys keys and attn is 0 on the others (token padding, see attention.NestedAttention); z is computed for
    all N.

    The noise's seed is one draw from torch's global CPU generator, so `torch.manual_seed` and activation
    checkpointing replay it. It is drawn on the host at each call, so a CUDA graph (torch.compile's
    mode='reduce-overhead') would replay one seed: the trainer does not use that mode.

    A custom op, so that `torch.compile` keeps the kernel and its backward as they are.
    """
    if not 0 <= slope <= 1:
        raise ValueError(f'the fused kernels take a LeakyReLU slope in [0, 1] (max(a, slope a)), got {slope}')
    fwd, _ = _kernels()
    mix = w1 is not None
    H, R, N, F, HP, FP, fold = _launch_shape(s, w1)
    seed = int(torch.randint(0, 2 ** 31 - 1, ())) if sigma > 0 else 0
    z = torch.empty_like(s)
    attn = torch.empty_like(s, dtype=attn_dtype)
    w = _weights([w1, b1, w2, b2, w3, b3]) if mix else [s] * 6  # unread placeholders without a mix
    fwd[(R,)](s, z, attn, *w, R, N, N if n_keys is None else n_keys, H, F, seed, sigma, slope,
              HP=HP, FP=FP, BLOCK_J=_BLOCK_J[0], MIX=mix, NOISE=sigma > 0, FOLD=fold, PREC=_precision(s),
              num_warps=_NUM_WARPS[0])
    return z, attn


@mix_noise_softmax.register_fake
def _(s, w1, b1, w2, b2, w3, b3, sigma, slope, attn_dtype, n_keys=None):
    return torch.empty_like(s), torch.empty_like(s, dtype=attn_dtype)


@torch.library.custom_op('neatt::mix_noise_softmax_backward', mutates_args=())
def mix_noise_softmax_backward(grad_z: Optional[torch.Tensor], grad_attn: torch.Tensor, s: torch.Tensor,
                               attn: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor],
                               w2: Optional[torch.Tensor], b2: Optional[torch.Tensor], w3: Optional[torch.Tensor],
                               b3: Optional[torch.Tensor], slope: float) -> List[torch.Tensor]:
    """[ds] without a mix, else [ds, dw1, db1, dw2, db2, dw3, db3] (weight grads in float32)."""
    _, bwd = _kernels()
    mix = w1 is not None
    H, R, N, F, HP, FP, fold = _launch_shape(s, w1)
    ds = torch.empty_like(s)
    grid = R if not mix else min(R, _PROGRAMS_PER_SM * _multiprocessors(s.device))
    part = torch.zeros(grid if mix else 1, 2 * FP * HP + FP * FP + 2 * FP + HP, device=s.device)
    w = _weights([w1, b1, w2, b2, w3, b3]) if mix else [s] * 6
    gz = grad_attn if grad_z is None else grad_z.contiguous()
    bwd[(grid,)](gz, grad_attn.contiguous(), s, attn, ds, part, *w, R, N, H, F, slope,
                 HP=HP, FP=FP, BLOCK_J=_BLOCK_J[1], MIX=mix, HAS_GZ=grad_z is not None, FOLD=fold,
                 PREC=_precision(s), num_warps=_NUM_WARPS[1])
    if not mix:
        return [ds]
    dw1, dw2, dw3, db1, db2, db3 = part.sum(0).split([FP * HP, FP * FP, HP * FP, FP, FP, HP])
    dw1, dw2, dw3 = dw1.view(FP, HP), dw2.view(FP, FP), dw3.view(HP, FP)
    if fold:  # the bias gradients are the columns that met the constant 1s (see _load_mlp)
        db1, db2, db3 = dw1[:, H], dw2[:, F], dw3[:, F]
    grads = [dw1[:F, :H], db1[:F], dw2[:F, :F], db2[:F], dw3[:H, :F], db3[:H]]
    return [ds] + [g.clone() for g in grads]  # a custom op's outputs may not alias each other


@mix_noise_softmax_backward.register_fake
def _(grad_z, grad_attn, s, attn, w1, b1, w2, b2, w3, b3, slope):
    if w1 is None:
        return [torch.empty_like(s)]
    f32 = {'dtype': torch.float32, 'device': s.device}
    F, H = w1.shape
    return [torch.empty_like(s), s.new_empty((F, H), **f32), s.new_empty((F,), **f32), s.new_empty((F, F), **f32),
            s.new_empty((F,), **f32), s.new_empty((H, F), **f32), s.new_empty((H,), **f32)]


def _multiprocessors(device: torch.device) -> int:
    if device.type != 'cuda':
        return 1  # TRITON_INTERPRET on CPU tensors
    return torch.cuda.get_device_properties(device).multi_processor_count


def _setup_context(ctx, inputs, output):
    s, w1, b1, w2, b2, w3, b3, sigma, slope, attn_dtype, n_keys = inputs
    ctx.set_materialize_grads(False)  # an unused z (the last block's) gives None, not a tensor of zeros to read
    ctx.save_for_backward(s, output[1], w1, b1, w2, b2, w3, b3)
    ctx.slope = slope
    ctx.weight_dtypes = [None if w is None else w.dtype for w in (w1, b1, w2, b2, w3, b3)]


def _backward(ctx, grad_z, grad_attn):
    s, attn, w1, b1, w2, b2, w3, b3 = ctx.saved_tensors
    if grad_attn is None:  # attn unused: only z's gradient flows back
        grad_attn = torch.zeros_like(attn)
    grads = mix_noise_softmax_backward(grad_z, grad_attn, s, attn, w1, b1, w2, b2, w3, b3, ctx.slope)
    ds, weight_grads = grads[0], grads[1:] or [None] * 6
    weight_grads = [g if g is None else g.to(dt) for g, dt in zip(weight_grads, ctx.weight_dtypes)]
    return (ds, *weight_grads, None, None, None, None)


mix_noise_softmax.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.neatt.mix_noise_softmax)
def _forward_flops(s_shape, w1_shape, *args, **kwargs) -> int:
    return head_mix_flops(s_shape, w1_shape)


@register_flop_formula(torch.ops.neatt.mix_noise_softmax_backward)
def _backward_flops(grad_z_shape, grad_attn_shape, s_shape, attn_shape, w1_shape, *args, **kwargs) -> int:
    return head_mix_flops(s_shape, w1_shape, backward=True)
