"""stream_row (the augmentation kernel's streaming-store row copy) against a plain numpy copy: every length and
alignment, the values around the row untouched."""
import numpy as np
import pytest
from numba import njit

from pipelines.augment.stream_store import stream_fence, stream_row


@njit
def _copy(dst, src):
    stream_row(dst, src)
    stream_fence()


@pytest.mark.parametrize('offset', range(9))  # floats past a 64-byte boundary: every 32-byte misalignment
def test_stream_row_copies_exactly_the_row(offset):
    rng = np.random.default_rng(offset)
    for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 672]:
        buf = np.full(n + 32, -1.0, np.float32)
        shift = (-buf.ctypes.data % 64) // 4  # buf[shift] is 64-byte aligned (numpy aligns to 16 at least)
        src = rng.standard_normal(n).astype(np.float32)
        _copy(buf[shift + offset:shift + offset + n], src)
        np.testing.assert_array_equal(buf[shift + offset:shift + offset + n], src)
        assert (buf[:shift + offset] == -1).all() and (buf[shift + offset + n:] == -1).all()


def test_stream_row_into_a_byte_misaligned_row():
    """A float32 view at an odd byte address (np.frombuffer) gets plain stores only."""
    raw = np.zeros(4 * 40 + 1, np.uint8)
    dst = np.frombuffer(raw.data, np.float32, count=40, offset=1)
    src = np.arange(40, dtype=np.float32)
    _copy(dst, src)
    np.testing.assert_array_equal(dst, src)
