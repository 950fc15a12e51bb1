"""The logit noise re-derived in plain numpy from its written definition (neatt/models/logit_noise.py's
docstring): Philox4x32-10 on uint64 arrays, Box-Muller with numpy's float64 log/cos/sin. Shared by the noise
tests (the CPU generator, and the fused GPU kernel's, which draws the same normals per counter in another
layout) and the model's naive re-computation."""
import numpy as np
import torch

GROUP, LANES = 1024, 256  # as documented; the noise test checks the module agrees
_M = (0xD2511F53, 0xCD9E8D57)
_W = (0x9E3779B9, 0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key0: int, key1: int):
    """Random123's Philox4x32-10 under the key (key0, key1); `counter` holds the four counter words (arrays or
    ints); returns the four output words as uint64 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = key0, key1
    for _ in range(10):
        p0, p1 = c0 * np.uint64(_M[0]), c2 * np.uint64(_M[1])
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _MASK,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _MASK)
        k0, k1 = (k0 + _W[0]) & 0xFFFFFFFF, (k1 + _W[1]) & 0xFFFFFFFF
    return c0, c1, c2, c3


def philox_normals(counters, seed: int) -> np.ndarray:
    """The four normals of each Philox counter (c, 0, 0, 0) under the key (seed's low, high 32 bits), float64,
    shape (len(counters), 4): Box-Muller of the words (w0, w1), then of (w2, w3), the first word of a pair giving
    the radius, the second the angle; each pair gives (r cos, r sin)."""
    c = np.asarray(counters, dtype=np.uint64)
    w = philox4x32_10((c, 0 * c, 0 * c, 0 * c), seed & 0xFFFFFFFF, seed >> 32)
    out = np.empty((len(c), 4))
    for pair, (wu, wv) in enumerate([(w[0], w[1]), (w[2], w[3])]):
        u = ((wu >> np.uint64(9)).astype(np.float64) + 0.5) / 2 ** 23
        angle = 2 * np.pi * (wv >> np.uint64(9)).astype(np.float64) / 2 ** 23
        r = np.sqrt(-2 * np.log(u))
        out[:, 2 * pair], out[:, 2 * pair + 1] = r * np.cos(angle), r * np.sin(angle)
    return out


def logit_noise(n: int, seed: int) -> np.ndarray:
    """The first n values of the CPU noise's eps for a seed (logit_noise.py's layout: in groups of GROUP values,
    counter g * LANES + j gives the values g * GROUP + q * LANES + j, q = 0..3), float64."""
    groups = -(-n // GROUP)
    normals = philox_normals(np.arange(groups * LANES), seed)  # (groups * LANES, 4)
    return normals.reshape(groups, LANES, 4).transpose(0, 2, 1).reshape(-1)[:n]


def next_logit_noise(shape) -> torch.Tensor:
    """eps for the next noise draw: its seed is the next draw from torch's global generator, as the op does."""
    seed = int(torch.randint(0, 2 ** 63 - 1, ()))
    n = int(np.prod(shape))
    return torch.from_numpy(logit_noise(n, seed)).float().reshape(shape)
