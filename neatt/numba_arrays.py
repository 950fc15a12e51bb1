"""Scratch arrays for our numba kernels, aligned to a 64-byte cache line.

Numba's `np.empty` aligns its data to 32 bytes only; in the kernels' allocation patterns it put some buffers at
32 modulo 64 every time (a probe of the forward's four buffers), and then each 512-bit load or store of them
straddles two cache lines. On the development VM (AVX-512) a head-mix layer over misaligned buffers ran 1.4-1.5x
slower, and aligning the head mix's tile buffers made its kernels 5-20% faster at H = 3 (paired runs,
2026-11-28, docs/benchmarks.md). Kept apart from `neatt.runtime`: defining a numba function sets numba up,
which the settings there must precede.
"""
import numpy as np
from numba import njit

__all__ = ['empty_aligned', 'zeros_aligned']

_ALIGN = 64  # bytes: a cache line, and one AVX-512 vector


@njit(cache=True)
def _from_boundary(raw, n):
    """raw[start:start + n] for the first `start` whose address is a multiple of 64 bytes."""
    start = -raw.ctypes.data % _ALIGN // raw.itemsize
    return raw[start:start + n]


# Plain calls, not inline='always': inlined (zeros_aligned calling empty_aligned, several dtypes in one function),
# they once failed to type in a full CI run, a uint8 buffer typed read-only; alone, that never happened.
@njit(cache=True)
def empty_aligned(n, dtype):
    """np.empty(n, dtype), with its data on a 64-byte boundary (for itemsizes that divide 64)."""
    return _from_boundary(np.empty(n + _ALIGN - 1, dtype), n)  # over by at least _ALIGN - 1 bytes


@njit(cache=True)
def zeros_aligned(n, dtype):
    """np.zeros(n, dtype), with its data on a 64-byte boundary."""
    return _from_boundary(np.zeros(n + _ALIGN - 1, dtype), n)
