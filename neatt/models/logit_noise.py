"""The Ne-Att logit noise on CPU: z + sigma * eps, eps ~ N(0, 1), drawn in parallel by a counter-based generator.

Why hand-written: torch's CPU `normal_` runs on one thread, because its Mersenne Twister is sequential; a block's
logits (H * B * N^2 values, 1.9 M at ViT-Ti batch 16) then cost ~10 ms per block, more than the matmuls that
make them. Here every value is a pure function of (seed, index), so numba's threads each fill a part and the
add of z happens in the same pass. The seed is one draw from torch's global CPU generator per call, so
`torch.manual_seed` reproduces a run, and activation checkpointing (which restores the RNG state) recomputes
the same eps.

The generator, documented so that anyone can re-derive eps (tests/test_logit_noise.py does, in plain numpy):
- Philox4x32-10 (Salmon et al., SC'11; Random123's reference), key = the seed's low and high 32 bits, counter
  (c, 0, 0, 0) for c = 0, 1, ...; each counter gives the words w0..w3.
- The values are laid out in groups of `GROUP` = 4 * `LANES`: counter c = g * LANES + j writes value
  g * GROUP + q * LANES + j for q = 0..3 (contiguous stores per word, so the loops vectorize).
- Box-Muller per word pair: u = ((w0 >> 9) + 0.5) / 2^23 in (0, 1), v = (w1 >> 9) / 2^23 in [0, 1),
  r = sqrt(-2 ln u): q = 0 takes r cos(2 pi v), q = 1 r sin(2 pi v); (w2, w3) give q = 2, 3 the same way.
  |eps| <= sqrt(2 ln 2^24) = 5.77: the tail beyond is cut (probability 8e-9), as with any 24-bit uniform.
- ln, cos and sin are Cephes' float32 polynomials (relative error ~1e-7), written out so that LLVM
  vectorizes them; libm calls would not.
"""
from typing import Optional, Tuple

import numpy as np
import torch
from numba import njit, prange

from neatt.runtime import numba_threads_like_torch, use_threadsafe_numba

__all__ = ['add_logit_noise', 'normal_group', 'philox_key', 'GROUP', 'LANES']

use_threadsafe_numba()

LANES = 256  # counters per group
GROUP = 4 * LANES  # values per group
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


@njit(inline='always')
def _philox4x32_10(c0, k0, k1):
    """Philox4x32-10 of the counter (c0, 0, 0, 0) under the key (k0, k1); every value a uint64 below 2^32."""
    c1 = c2 = c3 = np.uint64(0)
    for _ in range(10):
        p0 = np.uint64(_PHILOX_M0) * c0
        p1 = np.uint64(_PHILOX_M1) * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & np.uint64(_MASK32),
                          (p0 >> 32) ^ c3 ^ k1, p0 & np.uint64(_MASK32))
        k0 = (k0 + np.uint64(_PHILOX_W0)) & np.uint64(_MASK32)
        k1 = (k1 + np.uint64(_PHILOX_W1)) & np.uint64(_MASK32)
    return c0, c1, c2, c3


@njit(inline='always', fastmath=True)
def _log(x):
    """Natural log of a float32 in (0, 1] (Cephes logf): exponent from the bits, polynomial on the mantissa."""
    bits = np.float32(x).view(np.int32)
    e = np.float32(((bits >> 23) & 0xFF) - 126)
    m = np.int32((bits & 0x7FFFFF) | 0x3F000000).view(np.float32)  # in [0.5, 1)
    small = m < np.float32(0.70710678)
    e = e - np.float32(1) if small else e
    x = m + m - np.float32(1) if small else m - np.float32(1)
    z = x * x
    y = ((((((((np.float32(7.0376836292e-2) * x - np.float32(1.1514610310e-1)) * x + np.float32(1.1676998740e-1))
               * x - np.float32(1.2420140846e-1)) * x + np.float32(1.4249322787e-1)) * x
             - np.float32(1.6668057665e-1)) * x + np.float32(2.0000714765e-1)) * x - np.float32(2.4999993993e-1))
         * x + np.float32(3.3333331174e-1))
    y = y * x * z + np.float32(-2.12194440e-4) * e - np.float32(0.5) * z
    return x + y + np.float32(0.693359375) * e


@njit(inline='always', fastmath=True)
def _cos_sin_turns(v):
    """(cos, sin) of 2 pi v for v in [0, 1]: the nearest quarter turn k, Cephes' polynomials on the rest."""
    k = np.floor(v * np.float32(4) + np.float32(0.5))
    a = (v - k * np.float32(0.25)) * np.float32(2 * np.pi)  # in [-pi/4, pi/4]
    z = a * a
    s = ((np.float32(-1.9515295891e-4) * z + np.float32(8.3321608736e-3)) * z - np.float32(1.6666654611e-1)) * z * a + a
    c = (((np.float32(2.443315711809948e-5) * z - np.float32(1.388731625493765e-3)) * z
          + np.float32(4.166664568298827e-2)) * z * z - np.float32(0.5) * z + np.float32(1))
    # rotate (c, s) by k quarter turns: (c, s), (-s, c), (-c, -s), (s, -c); one select each, so it vectorizes
    q = np.int32(k)
    odd = (q & 1) == 1
    cos_sign = np.float32(1 - 2 * (((q + 1) >> 1) & 1))
    sin_sign = np.float32(1 - 2 * ((q >> 1) & 1))
    return cos_sign * (s if odd else c), sin_sign * (c if odd else s)


@njit(inline='always')
def _unit(w):
    """The top 23 bits of a 32-bit word as a float32 in [0, 1)."""
    return np.float32(np.int32(w >> np.uint64(9))) * np.float32(2.0 ** -23)


@njit(inline='always', fastmath=True)
def normal_group(g, k0, k1, u, v, eps):
    """eps[:GROUP] = the values of group g of the stream under the key (k0, k1); u, v: float32 scratch of
    2 * LANES. Three simple loops (words to uniforms, Box-Muller per half) rather than one: each vectorizes."""
    for j in range(LANES):
        w0, w1, w2, w3 = _philox4x32_10(np.uint64(g * LANES + j), k0, k1)
        u[j], v[j] = _unit(w0) + np.float32(2.0 ** -24), _unit(w1)  # (w0, w2) of each counter -> radius
        u[LANES + j], v[LANES + j] = _unit(w2) + np.float32(2.0 ** -24), _unit(w3)  # (w1, w3) -> angle
    for h in range(2):  # pair h * LANES + j gives the values (2 h) * LANES + j and (2 h + 1) * LANES + j
        us, vs = u[h * LANES:(h + 1) * LANES], v[h * LANES:(h + 1) * LANES]
        cos_out, sin_out = eps[2 * h * LANES:(2 * h + 1) * LANES], eps[(2 * h + 1) * LANES:(2 * h + 2) * LANES]
        for j in range(LANES):
            r = np.sqrt(np.float32(-2) * _log(us[j]))
            c, s = _cos_sin_turns(vs[j])
            cos_out[j], sin_out[j] = r * c, r * s


@njit(parallel=True, fastmath=True, cache=True)
def _add_noise(z, sigma, k0, k1, out):
    """out = z + sigma * eps over flat float32 arrays, one group of GROUP values per prange step."""
    n = z.size
    for g in prange((n + GROUP - 1) // GROUP):
        u, v = np.empty(2 * LANES, np.float32), np.empty(2 * LANES, np.float32)
        eps = np.empty(GROUP, np.float32)
        normal_group(g, k0, k1, u, v, eps)
        start = g * GROUP
        zs, os = z[start:start + GROUP], out[start:start + GROUP]
        for i in range(zs.size):
            os[i] = zs[i] + sigma * eps[i]


def philox_key(generator: Optional[torch.Generator] = None) -> Tuple[np.uint64, np.uint64]:
    """The key (k0, k1) of a new stream: one 63-bit seed drawn from `generator` (default: torch's global CPU
    generator), split into its low and high 32 bits."""
    seed = int(torch.randint(0, 2 ** 63 - 1, (), generator=generator))
    return np.uint64(seed & _MASK32), np.uint64(seed >> 32)


@torch.library.custom_op('neatt::add_logit_noise', mutates_args=())
def add_logit_noise(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """z + sigma * eps for a float32 CPU tensor; eps as the module docstring defines it, seeded by one draw from
    torch's global CPU generator.

    A custom op, so that `torch.compile` keeps it opaque: inductor would otherwise inline its own randn (a
    scalar Philox loop in its C++ kernels, and other numbers than eager's).
    """
    k0, k1 = philox_key()
    out = torch.empty_like(z, memory_format=torch.contiguous_format)
    numba_threads_like_torch()
    _add_noise(z.detach().contiguous().view(-1).numpy(), np.float32(sigma), k0, k1, out.view(-1).numpy())
    return out


@add_logit_noise.register_fake
def _(z, sigma):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


add_logit_noise.register_autograd(lambda ctx, grad: (grad, None))
