"""DeviceAugment's CPU path: each image's whole chain (flip, aa ops, normalize, erase) in one numba kernel.

Why hand-written: on the CPU the batched torch ops (ops.py, the path kept for accelerators) spend their time on
float temporaries and in grid_sample, and no library runs a per-image chain of Pillow-exact uint8 ops over a
batch. Here each image lives in two small uint8 buffers (cache-resident) while its drawn ops run, then is written
once, normalized, into the float output; `prange` spreads the images over numba's threads (`augment` sets their
number to torch's). Each op follows Pillow's C code, float types and rounding included (Blend.c in float32,
Geometry.c's affine filters in float64, or float32 where that provably rounds alike, the 3x3 SMOOTH filter
rounded), so the results are Pillow's own: tests/test_augment_cpu.py compares every op with timm's PIL op.
"""
import math
from typing import Optional

import numpy as np
import torch
from numba import njit, parallel_chunksize, prange

from neatt.runtime import numba_threads_like_torch, use_threadsafe_numba

from .erasing import NoiseBoxes, box_noise, erase_row
from .stream_store import stream_fence, stream_row

__all__ = ['OP_CODES', 'NONE', 'WARP_BILINEAR', 'WARP_BICUBIC', 'augment', 'pack_row']

use_threadsafe_numba()

NONE = 0  # no op in this slot
WARP_BILINEAR, WARP_BICUBIC = 11, 12  # Pillow's affine transform; the kernel spots 1-D shears/translations
OP_CODES = {
    'AutoContrast': 1, 'Equalize': 2, 'Invert': 3,
    'Posterize': 4, 'PosterizeIncreasing': 4, 'PosterizeOriginal': 4,
    'Solarize': 5, 'SolarizeIncreasing': 5, 'SolarizeAdd': 6,
    'Color': 7, 'ColorIncreasing': 7, 'Contrast': 8, 'ContrastIncreasing': 8,
    'Brightness': 9, 'BrightnessIncreasing': 9, 'Sharpness': 10, 'SharpnessIncreasing': 10,
    'Desaturate': 13, 'GaussianBlur': 14, 'GaussianBlurRand': 14,
}


@njit(inline='always')
def _u8(v):
    """Pillow's clip to 0..255 then truncation (Blend.c, Geometry.c); branchless, so that loops vectorize."""
    return np.uint8(min(max(v, 0.0), 255.0))


@njit(inline='always')
def _blend(d, i, f):
    """Pillow's ImagingBlend on one value: float32 `d + f * (i - d)` (the int difference is exact in float32),
    clipped, truncated."""
    fd = np.float32(d)
    return np.uint8(min(max(fd + f * (np.float32(i) - fd), np.float32(0)), np.float32(255)))


@njit(inline='always')
def pack_row(s, row):
    """row[x] = RGB pixel x of the flat uint8 row s as one uint32 (bytes 0..2). Loops over packed pixels
    vectorize; loops over 3-byte pixels do not (a Color blend or a mirrored row costs ~3x more that way)."""
    for x in range(row.size):
        row[x] = np.uint32(s[3 * x]) | (np.uint32(s[3 * x + 1]) << 8) | (np.uint32(s[3 * x + 2]) << 16)


@njit(inline='always')
def _unpack_row(row, d):
    """The inverse of `pack_row`."""
    for x in range(row.size):
        v = row[x]
        d[3 * x], d[3 * x + 1], d[3 * x + 2] = np.uint8(v & 255), np.uint8((v >> 8) & 255), np.uint8(v >> 16)


@njit
def _lut_op(src, dst, lut):
    """dst = lut[channel, src] (the aa ops run on RGB: channels unrolled, which is what makes the loops fast)."""
    h, w, _ = src.shape
    l0, l1, l2 = lut[0], lut[1], lut[2]
    for y in range(h):
        s, d = src[y], dst[y]
        for x in range(w):
            d[x, 0], d[x, 1], d[x, 2] = l0[s[x, 0]], l1[s[x, 1]], l2[s[x, 2]]


@njit
def _histogram(src):
    h, w, c = src.shape
    hist = np.zeros((c, 256), np.int64)
    h0, h1, h2 = hist[0], hist[1], hist[2]
    for y in range(h):
        s = src[y]
        for x in range(w):
            h0[s[x, 0]] += 1
            h1[s[x, 1]] += 1
            h2[s[x, 2]] += 1
    return hist


@njit
def _equalize(src, dst):
    """ImageOps.equalize: per channel, PIL's integer steps over the histogram's cumulative sum."""
    hist = _histogram(src)
    c = src.shape[2]
    lut = np.empty((c, 256), np.uint8)
    for k in range(c):
        last, nonzero, total = 0, 0, 0
        for v in range(256):
            if hist[k, v]:
                last, nonzero = v, nonzero + 1
            total += hist[k, v]
        step = (total - hist[k, last]) // 255 if nonzero > 1 else 0
        n = step // 2
        for v in range(256):
            lut[k, v] = v if step == 0 else min(n // step, 255)
            n += hist[k, v]
    _lut_op(src, dst, lut)


@njit
def _auto_contrast(src, dst):
    """ImageOps.autocontrast (cutoff 0): `int(i * scale + offset)` in float64, as Pillow's Python does."""
    hist = _histogram(src)
    c = src.shape[2]
    lut = np.empty((c, 256), np.uint8)
    for k in range(c):
        lo, hi = 0, 255
        while lo < 255 and hist[k, lo] == 0:
            lo += 1
        while hi > 0 and hist[k, hi] == 0:
            hi -= 1
        if hi <= lo:
            for v in range(256):
                lut[k, v] = v
        else:
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            for v in range(256):
                lut[k, v] = min(max(int(v * scale + offset), 0), 255)
    _lut_op(src, dst, lut)


@njit
def _point(src, dst, code, arg):
    """Invert, posterize (0 bits: black), solarize, solarize_add, as arithmetic on the flat image."""
    s, o = src.reshape(-1), dst.reshape(-1)
    a = int(arg)
    if code == 3:
        for i in range(s.size):
            o[i] = 255 - s[i]
    elif code == 4:
        mask = np.uint8((0xFF << (8 - min(max(a, 0), 8))) & 0xFF)
        for i in range(s.size):
            o[i] = s[i] & mask
    elif code == 5:  # compared as uint8, so that the loop vectorizes (~8x faster than against an int64)
        if a > 255:
            o[:] = s
        else:
            t = np.uint8(max(a, 0))
            for i in range(s.size):
                o[i] = np.uint8(255) - s[i] if s[i] >= t else s[i]
    else:
        for i in range(s.size):
            o[i] = min(255, s[i] + a) if s[i] < 128 else s[i]


@njit(inline='always')
def _luma(r, g, b):
    """Pillow's RGB -> L conversion of one pixel (fixed point, rounded)."""
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


@njit
def _color(src, dst, f):
    """ImageEnhance.Color: blend with the grayscale image (on packed rows, see `pack_row`)."""
    h, w, _ = src.shape
    row = np.empty(w, np.uint32)
    for y in range(h):
        pack_row(src[y].reshape(-1), row)
        for x in range(w):
            v = row[x]
            r, g, b = np.int32(v & 255), np.int32((v >> 8) & 255), np.int32(v >> 16)
            gray = _luma(r, g, b)
            row[x] = (np.uint32(_blend(gray, r, f)) | (np.uint32(_blend(gray, g, f)) << 8)
                      | (np.uint32(_blend(gray, b, f)) << 16))
        _unpack_row(row, dst[y].reshape(-1))


@njit
def _blend_const(src, dst, d, f):
    """Blend with a constant degenerate: Brightness (0) and Contrast (the rounded mean of the gray image)."""
    s, o = src.reshape(-1), dst.reshape(-1)
    for i in range(s.size):
        o[i] = _blend(d, s[i], f)


@njit
def _gray_mean(src):
    """ImageEnhance.Contrast's degenerate: int(mean of the L image + 0.5)."""
    h, w, _ = src.shape
    total = 0
    for y in range(h):
        s = src[y]
        for x in range(w):
            total += _luma(s[x, 0], s[x, 1], s[x, 2])
    return int(total / (h * w) + 0.5)


@njit
def _sharpness(src, dst, f):
    """ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (1 1 1 / 1 5 1 / 1 1 1, / 13, rounded to nearest;
    the 1-pixel border keeps the image, so blending leaves it as it is)."""
    h, w, c = src.shape
    dst[0] = src[0]
    dst[h - 1] = src[h - 1]
    for y in range(1, h - 1):
        dst[y, 0] = src[y, 0]
        dst[y, w - 1] = src[y, w - 1]
        for x in range(1, w - 1):
            for k in range(c):
                s = 4 * np.int32(src[y, x, k])
                for dy in range(-1, 2):
                    s += np.int32(src[y + dy, x - 1, k]) + np.int32(src[y + dy, x, k]) + np.int32(src[y + dy, x + 1, k])
                dst[y, x, k] = _blend((2 * s + 13) // 26, src[y, x, k], f)


@njit(inline='always')
def _box_blur_weights(radius):
    """Pillow's extended box of a 3-pass GaussianBlur(radius), as ops.box_blur_radius and ops.box_blur_weights:
    (box radius, integer radius r, inner weight ww, outer weight fw), in C's float32 arithmetic."""
    f1, f2, f3, f6 = np.float32(1), np.float32(2), np.float32(3), np.float32(6)
    rad = np.float32(radius)
    sigma2 = rad * rad / f3
    big_l = np.float32(math.sqrt(12.0 * np.float64(sigma2) + 1.0))
    small_l = np.float32(math.floor((np.float64(big_l) - 1.0) / 2.0))
    a = (f2 * small_l + f1) * (small_l * (small_l + f1) - f3 * sigma2)
    box = small_l + a / (f6 * (sigma2 - (small_l + f1) * (small_l + f1)))
    r = np.int64(box)
    ww = np.int64(np.float32(16777216.0) / (box * f2 + f1))
    return box, r, ww, (16777216 - (2 * r + 1) * ww) // 2


@njit
def _transpose(src, dst):
    """(H, W, C) -> (W, H, C)."""
    h, w, c = src.shape
    for y in range(h):
        s = src[y]
        for x in range(w):
            for k in range(c):
                dst[x, y, k] = s[x, k]


@njit
def _box_pass_y(src, dst, r, ww, fw):
    """One extended box pass down the columns of (H, W, C) uint8, Pillow's ImagingLineBoxBlur: per pixel a running
    sum over rows [y-r, y+r], the two rows beyond it at weight fw, edges replicated, rounded from 24-bit fixed
    point. It runs a row of running sums at a time (rows are contiguous); passes along x go through `_transpose`
    (as Pillow's own vertical passes do), which is faster than a running sum along each row."""
    h = src.shape[0]
    n = src.shape[1] * src.shape[2]
    s2, d2 = src.reshape(h, n), dst.reshape(h, n)
    last = h - 1
    acc = np.zeros(n, np.int64)
    for y in range(-r - 1, r):
        row = s2[min(max(y, 0), last)]
        for i in range(n):
            acc[i] += np.int64(row[i])
    for y in range(h):
        left, add, right = s2[max(y - r - 1, 0)], s2[min(y + r, last)], s2[min(y + r + 1, last)]
        d = d2[y]
        for i in range(n):
            lv = np.int64(left[i])
            acc[i] += np.int64(add[i]) - lv
            d[i] = (acc[i] * ww + (lv + np.int64(right[i])) * fw + 8388608) >> 24


@njit
def _gaussian_blur(src, dst, radius):
    """ImageFilter.GaussianBlur(radius): three box passes along x, each rounded to uint8, then three along y."""
    box, r, ww, fw = _box_blur_weights(radius)
    if box == 0:
        dst[:] = src
        return
    h, w, c = src.shape
    a, b = np.empty((w, h, c), np.uint8), np.empty((w, h, c), np.uint8)
    _transpose(src, a)
    _box_pass_y(a, b, r, ww, fw)
    _box_pass_y(b, a, r, ww, fw)
    _box_pass_y(a, b, r, ww, fw)
    tmp = np.empty_like(dst)
    _transpose(b, tmp)
    _box_pass_y(tmp, dst, r, ww, fw)
    _box_pass_y(dst, tmp, r, ww, fw)
    _box_pass_y(tmp, dst, r, ww, fw)


@njit(inline='always')
def _cubic(v1, v2, v3, v4, d):
    """Pillow's BICUBIC macro (Geometry.c, a = -1), float64, in its own operation order."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


@njit(inline='always')
def _clamp(i, n):
    return min(max(i, 0), n - 1)


_CHUNK = 64  # output pixels per pass of `_warp_bicubic`: its scratch arrays (about 7 KiB) stay in the L1 cache
_PAD = 2  # edge pixels repeated around the packed image: every tap of a sample point inside is in it


@njit(inline='always')
def _tap(taps, t, x, shift):
    """Channel byte `shift` of tap word t of chunk pixel x, as a float (a word holds two pixels, 32 bits apart)."""
    return float(np.int32((taps[t * _CHUNK + x] >> np.uint64(shift)) & np.uint64(255)))


@njit(inline='always')
def _tap_cubic(taps, t, x, d, shift):
    """`_cubic` along a row of 4 taps, packed in the words t, t + 1 of chunk pixel x."""
    return _cubic(_tap(taps, t, x, shift), _tap(taps, t, x, shift + 32), _tap(taps, t + 1, x, shift),
                  _tap(taps, t + 1, x, shift + 32), d)


# The 2-D bicubic runs in float32 (2x float64's lanes), in the weight form of Pillow's cubic (`_cubic_weights`: the
# weights of the 4 x and 4 y taps are computed once per pixel for its 3 channels), and redoes in float64, in
# Pillow's own operation order, only the values that float32 cannot place: those within _NEAR of an integer
# (Pillow clips, then truncates). Bound on |float32 value - Pillow's float64 value|, u = 2^-24 (float32's unit
# roundoff): (1) the computed weights are off by <= 0.8u, 6u, 2.8u and 0.55u (w1..w4 as written; 1 - d is exact
# for d >= 1/2 and off by <= u below), < 10.2u in all. (2) A row of integer taps <= 255: 10.2u * 255 from the
# weights, u * 1.5 * 255 from the products (sum of |w| <= 1.5) and 3 * 383u from the sums: < 4130u; rows lie
# in [-63.75, 318.75]. (3) The column: 1.5 * 4130u carried from the rows, 10.2u * 319 from its weights, 4 * 479u
# from its products and sums: < 11400u = 6.8e-4. (4) Rounding dx and dy to float32 moves each by <= 2^-25
# against a slope <= 1.5 * 1.5 * 255 (the weights' derivatives sum to 0, their positive parts to <= 1.5):
# < 3.5e-5. Sum < 7.2e-4; Pillow's own float64 errors are ~1e-11 (the worst seen on 8M random tap sets, half
# of them 0/255 patterns, was 1.2e-4). _NEAR is 2.7x the bound.
_NEAR = np.float32(2.0 ** -9)


@njit(inline='always')
def _cubic_weights(d):
    """`_cubic` as weights of v1..v4 (same polynomial): -d(1-d)^2, 1 - d^2(2-d), d(1 + d(1-d)), -d^2(1-d)."""
    one = np.float32(1)
    e = one - d
    d2 = d * d
    return -((d * e) * e), one - d2 * (one + e), d * (one + d * e), -(d2 * e)


@njit(inline='always')
def _word_byte(words, t, x, shift):
    """Channel byte `shift` of tap t of chunk pixel x (one RGB pixel per uint32 word, tap-major)."""
    return np.int32((words[t * _CHUNK + x] >> np.uint32(shift)) & np.uint32(255))


@njit(inline='always')
def _word_cubic(words, t, x, d, shift):
    """`_cubic` along taps t..t + 3 of chunk pixel x, in float64 (Pillow's arithmetic)."""
    return _cubic(float(_word_byte(words, t, x, shift)), float(_word_byte(words, t + 1, x, shift)),
                  float(_word_byte(words, t + 2, x, shift)), float(_word_byte(words, t + 3, x, shift)), d)


@njit(inline='always')
def _word_bicubic(words, x, dx, dy, shift):
    """Pillow's 2-D bicubic in float64: four cubics along x (taps 0..3, 4..7, ...), one along y."""
    return _cubic(_word_cubic(words, 0, x, dx, shift), _word_cubic(words, 4, x, dx, shift),
                  _word_cubic(words, 8, x, dx, shift), _word_cubic(words, 12, x, dx, shift), dy)


@njit(inline='always')
def _word_row32(words, t, x, w1, w2, w3, w4, shift):
    """The weighted sum of taps t..t + 3 of chunk pixel x, in float32."""
    v1, v2 = np.float32(_word_byte(words, t, x, shift)), np.float32(_word_byte(words, t + 1, x, shift))
    v3, v4 = np.float32(_word_byte(words, t + 2, x, shift)), np.float32(_word_byte(words, t + 3, x, shift))
    return ((w1 * v1 + w2 * v2) + w3 * v3) + w4 * v4


@njit(inline='always')
def _word_bicubic32(words, x, wx, wy, shift):
    """The 2-D bicubic in float32 from the weights wx, wy (4 each) of `_cubic_weights`."""
    r0 = _word_row32(words, 0, x, wx[0], wx[1], wx[2], wx[3], shift)
    r1 = _word_row32(words, 4, x, wx[0], wx[1], wx[2], wx[3], shift)
    r2 = _word_row32(words, 8, x, wx[0], wx[1], wx[2], wx[3], shift)
    r3 = _word_row32(words, 12, x, wx[0], wx[1], wx[2], wx[3], shift)
    return ((wy[0] * r0 + wy[1] * r1) + wy[2] * r2) + wy[3] * r3


@njit(inline='always')
def _u8_32(v):
    """`_u8` of a float32, staying in float32."""
    return np.uint8(min(max(v, np.float32(0)), np.float32(255)))


@njit
def _packed_pairs(src, mirror):
    """The image (mirrored if `mirror`) padded by `_PAD` repeated edge pixels (Pillow clamps taps to the edge),
    one uint64 per position holding that RGB pixel (bytes 0..2) and its right neighbour's (bytes 4..6): a row's
    4 taps are 2 loads."""
    h, w, _ = src.shape
    wp = w + 2 * _PAD
    row = np.empty(wp + 1, np.uint32)
    pairs = np.empty((h + 2 * _PAD) * wp, np.uint64)
    for y in range(h):
        packed = row[_PAD:_PAD + w]
        pack_row(src[y].reshape(-1), packed)
        if mirror:
            for x in range(w // 2):
                packed[x], packed[w - 1 - x] = packed[w - 1 - x], packed[x]
        for x in range(_PAD):
            row[x] = row[_PAD]
        for x in range(_PAD + w, wp + 1):
            row[x] = row[_PAD + w - 1]
        p = pairs[(_PAD + y) * wp:(_PAD + y + 1) * wp]
        for x in range(wp):
            p[x] = np.uint64(row[x]) | (np.uint64(row[x + 1]) << np.uint64(32))
    for y in range(_PAD):
        pairs[y * wp:(y + 1) * wp] = pairs[_PAD * wp:(_PAD + 1) * wp]
        pairs[(_PAD + h + y) * wp:(_PAD + h + y + 1) * wp] = pairs[(_PAD + h - 1) * wp:(_PAD + h) * wp]
    return pairs


@njit(inline='always')
def _bicubic_chunk_2d(pairs, wp32, base, dxs, dys, n, words, d32, vals, near, out):
    """`_bicubic_chunk` of a warp along both axes: float32 weights and sums, float64 again for the channels
    whose value is near an integer (see _NEAR). A pixel whose 16 taps are equal is that pixel."""
    for x in range(n):
        b = base[x]
        for j in range(4):
            r = np.uint64(b + j * wp32)
            p, q = pairs[r], pairs[r + np.uint64(2)]
            t = 4 * j * _CHUNK + x
            words[t], words[t + _CHUNK] = np.uint32(p & np.uint64(0xFFFFFFFF)), np.uint32(p >> np.uint64(32))
            words[t + 2 * _CHUNK] = np.uint32(q & np.uint64(0xFFFFFFFF))
            words[t + 3 * _CHUNK] = np.uint32(q >> np.uint64(32))
    for x in range(_CHUNK):  # apart from the float32 loop: float64 data there would make it 4 lanes wide
        d32[x], d32[_CHUNK + x] = np.float32(dxs[x]), np.float32(dys[x])
    for x in range(_CHUNK):
        wx, wy = _cubic_weights(d32[x]), _cubic_weights(d32[_CHUNK + x])
        vals[x] = _word_bicubic32(words, x, wx, wy, 0)
        vals[_CHUNK + x] = _word_bicubic32(words, x, wx, wy, 8)
        vals[2 * _CHUNK + x] = _word_bicubic32(words, x, wx, wy, 16)
    any_near = np.uint8(0)
    one = np.uint8(1)
    for x in range(_CHUNK):
        diff = np.uint32(0)
        for t in range(1, 16):
            diff |= words[t * _CHUNK + x] ^ words[x]
        v0, v1, v2 = vals[x], vals[_CHUNK + x], vals[2 * _CHUNK + x]
        flat = diff == 0
        w = words[x]
        out[x] = np.uint8(w & 255) if flat else _u8_32(v0)
        out[_CHUNK + x] = np.uint8((w >> 8) & 255) if flat else _u8_32(v1)
        out[2 * _CHUNK + x] = np.uint8((w >> 16) & 255) if flat else _u8_32(v2)
        e = (min(_u8_32(v0 - _NEAR) ^ _u8_32(v0 + _NEAR), one)
             | (min(_u8_32(v1 - _NEAR) ^ _u8_32(v1 + _NEAR), one) << one)
             | (min(_u8_32(v2 - _NEAR) ^ _u8_32(v2 + _NEAR), one) << np.uint8(2)))
        near[x] = np.uint8(0) if flat else e
        any_near |= near[x]
    if any_near:
        for x in range(n):
            e = near[x]
            if e:
                for k in range(3):
                    if e & (1 << k):
                        out[k * _CHUNK + x] = _u8(_word_bicubic(words, x, dxs[x], dys[x], 8 * k))


@njit(inline='always')
def _bicubic_chunk(pairs, wp32, base, dxs, dys, n, along_x, taps, out):
    """`_warp_bicubic` steps (2) and (3) for one chunk of a 1-D warp (along x, else along y): gather the taps,
    compute the cubics into `out`."""
    if along_x:  # taps: row 1, columns 0..3
        for x in range(n):
            b = np.uint64(base[x] + wp32)
            taps[x], taps[_CHUNK + x] = pairs[b], pairs[b + np.uint64(2)]
    else:  # along y; taps: rows 0..3, column 1 (in the low half of the words)
        for x in range(n):
            b = base[x] + 1
            for j in range(4):
                taps[j * _CHUNK + x] = pairs[np.uint64(b + j * wp32)]
    if along_x:
        for x in range(_CHUNK):
            d = dxs[x]
            out[x] = _u8(_tap_cubic(taps, 0, x, d, 0))
            out[_CHUNK + x] = _u8(_tap_cubic(taps, 0, x, d, 8))
            out[2 * _CHUNK + x] = _u8(_tap_cubic(taps, 0, x, d, 16))
    else:
        for x in range(_CHUNK):
            d = dys[x]
            for k in range(3):
                out[k * _CHUNK + x] = _u8(_cubic(_tap(taps, 0, x, 8 * k), _tap(taps, 1, x, 8 * k),
                                                 _tap(taps, 2, x, 8 * k), _tap(taps, 3, x, 8 * k), d))


@njit
def _warp_bicubic(src, dst, m, fill, along_x, along_y, mirror):
    """`_warp`'s bicubic case, same float64 arithmetic, laid out so that the arithmetic vectorizes.

    Per chunk of `_CHUNK` output pixels of a row: (1) sample points, weights' fractions and the index of the
    top-left tap in the padded image of `_packed_pairs` (no clamping: the padding repeats the edges); (2) gather
    each pixel's taps (16 words of one pixel, or 2 of two pixels for a shear/translation along x, 4 along y)
    into tap-major scratch; (3) the cubics, a loop over the chunk that LLVM vectorizes (2-D: float32 weights,
    8 or 16 pixels per instruction with AVX2 or AVX-512, and a float64 redo near integers; 1-D: Pillow's float64,
    half as many), both skipped for a chunk that is all outside; (4) interleave into dst, fill where the sample
    point is outside.
    """
    h, w, _ = src.shape
    o = dst.reshape(-1)
    pairs = _packed_pairs(src, mirror)
    wp = w + 2 * _PAD
    taps = np.zeros(4 * _CHUNK, np.uint64)  # pixels past the row end (last chunk) compute on zeros
    words, vals = np.zeros(16 * _CHUNK, np.uint32), np.empty(3 * _CHUNK, np.float32)  # the same for 2-D
    d32, near = np.empty(2 * _CHUNK, np.float32), np.empty(_CHUNK, np.uint8)
    out = np.empty(3 * _CHUNK, np.uint8)
    dxs, dys, inside = np.empty(_CHUNK), np.empty(_CHUNK), np.empty(_CHUNK, np.bool_)
    base = np.empty(_CHUNK, np.int32)
    w_last, h_last, wp32 = float(w - 1), float(h - 1), np.int32(wp)
    centres = np.arange(w + _CHUNK) + 0.5  # x + 0.5 from a table: int64 -> float64 does not vectorize on AVX2
    for y in range(h):
        for x0 in range(0, w, _CHUNK):
            n = min(_CHUNK, w - x0)
            for x in range(_CHUNK):
                xin = m[0] * centres[x0 + x] + m[1] * (y + 0.5) + m[2]
                yin = m[3] * centres[x0 + x] + m[4] * (y + 0.5) + m[5]
                inside[x] = (0.0 <= xin) & (xin < w) & (0.0 <= yin) & (yin < h)
                xin -= 0.5
                yin -= 0.5
                fx, fy = np.floor(xin), np.floor(yin)
                dxs[x], dys[x] = xin - fx, yin - fy
                # inside: fx in [-1, w - 1]; points outside (filled) are bounded there too, to stay in the padding
                ix = np.int32(min(max(fx, -1.0), w_last))
                iy = np.int32(min(max(fy, -1.0), h_last))
                base[x] = (iy + np.int32(_PAD - 1)) * wp32 + ix + np.int32(_PAD - 1)  # tap (row 0, column 0)
            if inside[:n].any():  # else all fill: a rotation's corners, a translation's far side
                if along_x or along_y:
                    _bicubic_chunk(pairs, wp32, base, dxs, dys, n, along_x, taps, out)
                else:
                    _bicubic_chunk_2d(pairs, wp32, base, dxs, dys, n, words, d32, vals, near, out)
            row = o[(y * w + x0) * 3:(y * w + x0 + n) * 3]
            for x in range(n):
                ok = inside[x]
                row[3 * x] = out[x] if ok else fill[0]
                row[3 * x + 1] = out[_CHUNK + x] if ok else fill[1]
                row[3 * x + 2] = out[2 * _CHUNK + x] if ok else fill[2]


@njit
def _shift_rows_y(src, dst, m, fill, mirror):
    """`_warp_bicubic` of a warp along y with m[3] == 0 (TranslateY): every pixel of an output row samples the
    same source height (m[3] * (x + 0.5) is exactly 0), so the row is the cubic of 4 whole source rows with one
    fraction, over contiguous bytes. Mirrored input: the rows are computed as they are, then stored mirrored
    (the warp works per column)."""
    h, w, _ = src.shape
    tmp = np.empty(3 * w, np.uint8)
    for y in range(h):
        row = dst[y].reshape(-1)
        yin = m[3] * 0.5 + m[4] * (y + 0.5) + m[5]
        if not (0.0 <= yin < h):
            for x in range(w):
                row[3 * x], row[3 * x + 1], row[3 * x + 2] = fill[0], fill[1], fill[2]
            continue
        fy = np.floor(yin - 0.5)
        dy, iy = (yin - 0.5) - fy, int(fy)
        r0, r1 = src[_clamp(iy - 1, h)].reshape(-1), src[_clamp(iy, h)].reshape(-1)
        r2, r3 = src[_clamp(iy + 1, h)].reshape(-1), src[_clamp(iy + 2, h)].reshape(-1)
        out = tmp if mirror else row
        for i in range(3 * w):
            out[i] = _u8(_cubic(float(r0[i]), float(r1[i]), float(r2[i]), float(r3[i]), dy))
        if mirror:
            for x in range(w):
                for c in range(3):
                    row[3 * x + c] = tmp[3 * (w - 1 - x) + c]


@njit
def _warp(src, dst, m, fill, bicubic, mirror):
    """Image.transform(AFFINE, m, BILINEAR or BICUBIC, fillcolor=fill) as Geometry.c computes it.

    Pillow samples at x + 0.5, y + 0.5; a source point outside [0, w) x [0, h) keeps the fill; taps clamp to the
    edge. Shears and translations along one axis sample the other axis exactly at a pixel centre (weight 1 in
    Pillow's filter), so those read 4 taps instead of 16, with the same arithmetic; a translation along y reads
    whole rows instead (`_shift_rows_y`).
    """
    along_x = m[3] == 0.0 and m[4] == 1.0 and m[5] == 0.0  # yin == y + 0.5 exactly
    along_y = m[0] == 1.0 and m[1] == 0.0 and m[2] == 0.0
    if bicubic:
        if along_y and m[3] == 0.0:
            _shift_rows_y(src, dst, m, fill, mirror)
        else:
            _warp_bicubic(src, dst, m, fill, along_x, along_y, mirror)
        return
    h, w, c = src.shape
    for y in range(h):
        for x in range(w):
            xin = m[0] * (x + 0.5) + m[1] * (y + 0.5) + m[2]
            yin = m[3] * (x + 0.5) + m[4] * (y + 0.5) + m[5]
            if not (0.0 <= xin < w and 0.0 <= yin < h):
                for k in range(c):
                    dst[y, x, k] = fill[k]
                continue
            xin -= 0.5
            yin -= 0.5
            fx, fy = np.floor(xin), np.floor(yin)
            dx, dy = xin - fx, yin - fy
            ix, iy = int(fx), int(fy)
            x0, x1 = _clamp(ix, w), _clamp(ix + 1, w)
            y0, y1 = _clamp(iy, h), _clamp(iy + 1, h)
            for k in range(c):
                a, b = float(src[y0, x0, k]), float(src[y0, x1, k])
                v1 = a + (b - a) * dx
                a, b = float(src[y1, x0, k]), float(src[y1, x1, k])
                v2 = a + (b - a) * dx
                dst[y, x, k] = int(v1 + (v2 - v1) * dy)  # in range: Pillow truncates without a clip


@njit
def _flip(src, dst):
    h, w, c = src.shape
    for y in range(h):
        s, d = src[y], dst[y]
        for x in range(w):
            if c == 3:
                d[x, 0], d[x, 1], d[x, 2] = s[w - 1 - x, 0], s[w - 1 - x, 1], s[w - 1 - x, 2]
            else:
                d[x] = s[w - 1 - x]


@njit
def _apply(src, dst, code, arg, mat, fill, mirror):
    """One op, src -> dst (both (H, W, C) uint8); a bicubic warp reads src mirrored if `mirror` (its packing
    step flips for free), the other ops ignore it."""
    if code == 1:
        _auto_contrast(src, dst)
    elif code == 2:
        _equalize(src, dst)
    elif code <= 6:
        _point(src, dst, code, arg)
    elif code == 7:
        _color(src, dst, np.float32(arg))
    elif code == 8:
        _blend_const(src, dst, _gray_mean(src), np.float32(arg))
    elif code == 9:
        _blend_const(src, dst, 0, np.float32(arg))
    elif code == 10:
        _sharpness(src, dst, np.float32(arg))
    elif code == 13:  # timm's desaturate: Color at 1 - factor
        _color(src, dst, np.float32(min(1.0, max(0.0, 1.0 - arg))))
    elif code == 14:
        _gaussian_blur(src, dst, arg)
    else:
        _warp(src, dst, mat, fill, code == WARP_BICUBIC, mirror)


@njit(inline='always')
def _normalize_into(pixels, scale_row, shift_row, dst, values, noise):
    """(x / 255 - mean) / std as x * scale - shift along each row of W * C values: into the cache-resident row
    `values`, where the image's erasing boxes are painted (`noise`: `_image_noise`), then into dst with streaming
    stores (stream_store.py: dst is written once and read elsewhere)."""
    boxes, j0, j1, eps, at = noise
    for y in range(pixels.shape[0]):
        for i in range(pixels.shape[1]):
            values[i] = np.float32(pixels[y, i]) * scale_row[i] - shift_row[i]
        erase_row(values, y, boxes, j0, j1, eps, at)
        stream_row(dst[y], values)


@njit(inline='always')
def _normalize_flipped_into(pixels, scale_row, shift_row, dst, values, noise, row):
    """`_normalize_into` of the mirrored RGB image, through packed rows (`pack_row`) read backwards."""
    boxes, j0, j1, eps, at = noise
    w = row.size
    for y in range(pixels.shape[0]):
        pack_row(pixels[y], row)
        for x in range(w):
            v = row[w - 1 - x]
            values[3 * x] = np.float32(v & 255) * scale_row[3 * x] - shift_row[3 * x]
            values[3 * x + 1] = np.float32((v >> 8) & 255) * scale_row[3 * x + 1] - shift_row[3 * x + 1]
            values[3 * x + 2] = np.float32(v >> 16) * scale_row[3 * x + 2] - shift_row[3 * x + 2]
        erase_row(values, y, boxes, j0, j1, eps, at)
        stream_row(dst[y], values)


@njit(inline='always')
def _image_noise(b, boxes, group0, start, k0, k1):
    """Image b's erasing boxes and their noise (erasing.py's `NoiseBoxes`, `box_noise`), for `_normalize_into`."""
    j0, j1 = start[b], start[b + 1]
    eps, at = box_noise(boxes, group0, j0, j1, k0, k1)
    return boxes, j0, j1, eps, at


@njit(parallel=True, cache=True)
def _normalize(src, scale_row, shift_row, out, boxes, group0, start, k0, k1):
    """`_augment` of a batch with no flip and no op (eval, and training without --aa): only the normalization
    (and erasing). Separate because it compiles in seconds, where `_augment` with every op takes about 30 s the
    first time."""
    n, h, w, c = src.shape
    for b in prange(n):
        values = np.empty(w * c, np.float32)
        noise = _image_noise(b, boxes, group0, start, k0, k1)
        _normalize_into(src[b].reshape(h, w * c), scale_row, shift_row, out[b].reshape(h, w * c), values, noise)
        stream_fence()


@njit(parallel=True, cache=True)
def _augment(src, flip, code, arg, mats, fill, scale_row, shift_row, out, boxes, group0, start, k0, k1):
    """Per image: flip, ops, normalize and erase. The flip commutes with every op but the warps (the color ops
    are per pixel or use flip-invariant statistics; SMOOTH is symmetric), so it is done where it is cheapest: by
    the first warp (a bicubic one packs its input mirrored; a bilinear one gets a flipped copy), else by the
    normalization, which reads the pixels mirrored."""
    n, h, w, c = src.shape
    for b in prange(n):
        bufs = np.empty((2, h, w, c), np.uint8)
        row, values = np.empty(w, np.uint32), np.empty(w * c, np.float32)
        cur, held = src[b], -1  # held: which of bufs `cur` is (-1: the input image)
        mirror = flip[b]
        if mirror and c != 3:  # the mirrored reads (bicubic packing, normalization) pack RGB pixels
            _flip(cur, bufs[0])
            cur, held, mirror = bufs[0], 0, False
        for s in range(code.shape[1]):
            op = code[b, s]
            if op == NONE:
                continue
            if mirror and op == WARP_BILINEAR:
                held = 1 if held == 0 else 0
                _flip(cur, bufs[held])
                cur, mirror = bufs[held], False
            held = 1 if held == 0 else 0
            _apply(cur, bufs[held], op, arg[b, s], mats[b, s], fill, mirror)
            cur, mirror = bufs[held], mirror and op != WARP_BICUBIC
        noise = _image_noise(b, boxes, group0, start, k0, k1)
        if mirror:
            _normalize_flipped_into(cur.reshape(h, w * c), scale_row, shift_row, out[b].reshape(h, w * c), values,
                                    noise, row)
        else:
            _normalize_into(cur.reshape(h, w * c), scale_row, shift_row, out[b].reshape(h, w * c), values, noise)
        stream_fence()


def augment(images: torch.Tensor, flip: torch.Tensor, code: torch.Tensor, arg: torch.Tensor, mats: torch.Tensor,
            fill, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor, noise: Optional[NoiseBoxes] = None
            ) -> None:
    """Write each image's chain into `out`: flip if `flip[b]`, then the ops `code[b, s]` in slot order, then
    `x * scale - shift` per channel, then the random erasing boxes of `noise` (erasing.py's CPU 'pixel' noise,
    painted into each row as it is normalized: no second pass over the output).

    images: uint8 (B, C, H, W) CPU, channels_last; out: float32 of the same shape, channels_last. flip (B,) bool;
    code (B, L) int64 (`OP_CODES`, `WARP_*`, `NONE`); arg (B, L) float64 (the ops' argument as timm passes it);
    mats (B, L, 2, 3) float64 (Pillow's affine data for warps); fill: C ints; scale, shift: (C,) float32.
    """
    numba_threads_like_torch()
    b, c, h, w = images.shape
    src, dst = images.permute(0, 2, 3, 1).numpy(), out.permute(0, 2, 3, 1).numpy()
    scale_row, shift_row = scale.float().repeat(w).numpy(), shift.float().repeat(w).numpy()
    if noise is None:
        noise = NoiseBoxes(np.zeros((0, 4), np.int64), np.zeros(0, np.int64), np.zeros(b + 1, np.int64),
                           np.uint64(0), np.uint64(0))
    # an image to each free thread, not an even split: a Rotate costs 10x more than a plain image
    with parallel_chunksize(1):
        if flip.any() or (code != NONE).any():
            _augment(src, flip.numpy(), code.numpy(), arg.numpy(), mats.reshape(b, -1, 6).numpy(),
                     np.asarray(fill, np.uint8), scale_row, shift_row, dst, *noise)
        else:
            _normalize(src, scale_row, shift_row, dst, *noise)
