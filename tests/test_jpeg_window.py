"""The FFCV loader's JPEG window decoder (pipelines/_jpeg_window.c) against Pillow's decode of the whole image.

Real photos (datasets_builders.photo_tiles' sources) encoded the ways JPEGs come: OpenCV's encoder (what the
converter stores), Pillow's 4:2:0, 4:2:2 and 4:4:4 chroma, progressive, restart markers, grayscale; odd sizes,
so that windows end inside an iMCU. Tolerance 0 everywhere: the decoder uses Pillow's libjpeg settings.
"""
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets_builders import _photos_list
from pipelines.ffcv_loader import decode_window


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    p = _photos_list()[seed % len(_photos_list())]
    y, x = rng.integers(0, p.shape[0] - h + 1), rng.integers(0, p.shape[1] - w + 1)
    return np.ascontiguousarray(p[y:y + h, x:x + w])


def _pil_jpeg(img, **kw):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _cv2_jpeg(img):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), 90])
    assert ok
    return buf.tobytes()


ENCODINGS = {
    "opencv": _cv2_jpeg,
    "pil-420": lambda im: _pil_jpeg(im, subsampling=2),
    "pil-422": lambda im: _pil_jpeg(im, subsampling=1),
    "pil-444": lambda im: _pil_jpeg(im, subsampling=0),
    "progressive": lambda im: _pil_jpeg(im, progressive=True),
    "restart-markers": lambda im: _pil_jpeg(im, restart_marker_blocks=3),
    "grayscale": lambda im: _pil_jpeg(np.asarray(Image.fromarray(im).convert("L"))),
}


def _decode(jpeg: bytes, top, left, height, width, stride):
    """Returns (code, rows): code is the C function's result; rows the (height, stride) output buffer."""
    data = np.frombuffer(jpeg, np.uint8)
    out = np.full((height, stride), 7, np.uint8)
    code = decode_window(data.ctypes.data, data.size, top, left, height, width, out.ctypes.data, stride)
    return code, out


def _windows(h, w, rng):
    yield 0, 0, h, w  # the whole image
    yield 16, 32, h - 16 - 9, w - 32 - 5  # top-left on an iMCU edge, bottom-right inside one
    yield h - 1, w - 1, 1, 1  # the last pixel
    yield 3, 0, 1, w  # one row
    yield 0, 17, h, 1  # one column
    for _ in range(12):  # random-resized-crop-like
        wh, ww = rng.integers(1, h + 1), rng.integers(1, w + 1)
        yield rng.integers(0, h - wh + 1), rng.integers(0, w - ww + 1), wh, ww


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_windows_equal_pillows_decode(encoding):
    rng = np.random.default_rng(len(encoding))
    for k, (h, w) in enumerate([(203, 301), (176, 144), (97, 250)]):
        jpeg = ENCODINGS[encoding](_photo(h, w, seed=k))
        full = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        assert full.shape == (h, w, 3)
        for top, left, wh, ww in _windows(h, w, rng):
            code, rows = _decode(jpeg, top, left, wh, ww, stride=3 * w)
            assert 0 <= code <= left, (top, left, wh, ww, code)
            got = rows.reshape(wh, w, 3)[:, code:code + ww]
            assert np.array_equal(got, full[top:top + wh, left:left + ww]), (encoding, h, w, top, left, wh, ww)


def test_columns_start_at_an_imcu_edge_left_of_the_window():
    """Only the window's columns are decoded: the row starts at most one iMCU (16 px for 4:2:0) plus the one
    column of chroma context left of the window, not at column 0."""
    jpeg = _cv2_jpeg(_photo(120, 200, seed=3))
    code, _ = _decode(jpeg, 10, 150, 20, 30, stride=600)
    assert code == 150 - 144  # 150 - 1 = 149 rounds down to the iMCU edge 144: column 150 sits at 6


def test_bad_input_returns_an_error_code_and_writes_nothing_past_the_rows():
    jpeg = _cv2_jpeg(_photo(64, 80, seed=1))
    assert _decode(b"not a jpeg at all", 0, 0, 8, 8, 3 * 80)[0] == -1
    assert _decode(jpeg[:40], 0, 0, 8, 8, 3 * 80)[0] == -1  # the header is cut off
    assert _decode(jpeg, 60, 0, 5, 80, 3 * 80)[0] == -2  # rows 60..64 of a 64-row image
    assert _decode(jpeg, 0, 70, 4, 11, 3 * 80)[0] == -2  # columns 70..80 of an 80-column image
    assert _decode(jpeg, 0, 0, 4, 80, 3 * 40)[0] == -3  # a row does not fit the stride
    # a truncated scan is not an error for libjpeg (it pads with grey, as Pillow does with LOAD_TRUNCATED_IMAGES),
    # and the function must not write outside the rows it was given
    data = np.frombuffer(jpeg[:len(jpeg) // 2], np.uint8)
    out = np.full((64 + 1, 3 * 80), 7, np.uint8)
    code = decode_window(data.ctypes.data, data.size, 0, 0, 64, 80, out.ctypes.data, 3 * 80)
    assert code == 0 and (out[64] == 7).all()
