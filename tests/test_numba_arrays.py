"""neatt.numba_arrays: kernel scratch arrays start on a 64-byte cache line, whatever numba's allocator returns."""
import numpy as np
import pytest
from numba import njit

from neatt.numba_arrays import empty_aligned, zeros_aligned


@njit
def _allocate(n, fill):
    # interleaved allocations of several sizes and types, as in the kernels: numba's own np.empty put some of
    # these at 32 modulo 64
    a = np.empty(3, np.uint8)
    f32 = zeros_aligned(n, np.float32) if fill else empty_aligned(n, np.float32)
    b = np.empty(5, np.float32)
    f64 = empty_aligned(n, np.float64)
    u8 = zeros_aligned(n, np.uint8)
    u64 = empty_aligned(n, np.uint64)
    return a.size + b.size, f32, f64, u8, u64


@pytest.mark.parametrize('n', [1, 7, 128, 1000])
@pytest.mark.parametrize('fill', [False, True])
def test_arrays_start_on_a_cache_line(n, fill):
    _, *arrays = _allocate(n, fill)
    for a, dtype in zip(arrays, (np.float32, np.float64, np.uint8, np.uint64)):
        assert a.dtype == dtype and a.shape == (n,) and a.flags.c_contiguous
        assert a.ctypes.data % 64 == 0
    f32, _, u8, _ = arrays
    assert not u8.any()
    if fill:
        assert not f32.any()


def test_arrays_do_not_overlap():
    _, f32, f64, u8, u64 = _allocate(100, True)
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in (f32, f64, u8, u64))
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
