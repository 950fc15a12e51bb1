"""Batched tensor twins of timm's PIL auto-augment ops: uint8 (N, C, H, W) in, uint8 out, one argument per image.

Each op follows the PIL function timm calls (timm.data.auto_augment), including PIL's integer rounding, so a
chain of ops quantizes as timm's does. Rotations are one `grid_sample` for all the images that need one, with a
2x3 matrix each; shears and translations are 1-D resamplings with PIL's own filter (`warp_axis`).
tests/test_augment_ops.py compares every op with timm's PIL op on real photos.
`arg` is a float64 tensor (N,) on the images' device; ops without an argument ignore it.
"""
import math
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..transfer import to_device

__all__ = [
    'GEOMETRIC_OPS', 'AXIS_OPS', 'COLOR_OPS', 'identity_range', 'is_identity', 'affine_matrix', 'warp_affine',
    'warp_axis', 'blend', 'grayscale', 'invert', 'posterize', 'solarize', 'solarize_add', 'color', 'contrast',
    'brightness', 'sharpness', 'auto_contrast', 'equalize', 'desaturate', 'gaussian_blur',
]


def _per_image(arg: torch.Tensor, dtype=None) -> torch.Tensor:
    return arg.view(-1, 1, 1, 1).to(dtype or arg.dtype)


def blend(degenerate: torch.Tensor, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL `Image.blend(degenerate, img, factor)` on uint8: float32 `d + f * (i - d)`, clipped, truncated.

    `degenerate` may be a float tensor broadcastable to `img` (an integer-valued image or constant).
    """
    d = degenerate.float()
    out = img.float().sub_(d).mul_(_per_image(factor, torch.float32)).add_(d)
    return out.clamp_(0, 255).to(torch.uint8)


_GRAY_WEIGHTS = (19595.0, 38470.0, 7471.0)


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion, (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, as float (N, 1, H, W).

    The sums stay below 2**24, so float32 holds them exactly and the division by 2**16 is exact. Computed as
    a (pixels, 3) @ (3,) product on the channels_last memory (a reduction over a size-3 inner dim is slow).
    """
    n, c, h, w = img.shape
    weights = to_device(torch.tensor(_GRAY_WEIGHTS), img.device)
    pixels = img.permute(0, 2, 3, 1).reshape(n * h * w, c).float()
    gray = torch.mv(pixels, weights).add_(32768.0).div_(65536.0).floor_()
    return gray.view(n, h, w, 1).permute(0, 3, 1, 2)


def invert(img: torch.Tensor, arg=None) -> torch.Tensor:
    """PIL ImageOps.invert."""
    return torch.bitwise_not(img)


def posterize(img: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the `bits` high bits; 0 bits gives a black image (the TF EfficientNet intent), >= 8 keeps the image.

    PIL's ImageOps.posterize (Pillow >= 11) rejects 0 bits, which timm's v0 policy asks for at magnitude < 2.5.
    """
    shift = (8 - bits.clamp(0, 8)).long()
    mask = ((0xFF << shift) & 0xFF).to(torch.uint8)
    return img & _per_image(mask)


def solarize(img: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.solarize: invert the pixels >= thresh (thresh 256 leaves the image unchanged)."""
    above = img.short() >= _per_image(thresh, torch.int16)
    return img ^ (above.to(torch.uint8) * 255)


def solarize_add(img: torch.Tensor, add: torch.Tensor, thresh: int = 128) -> torch.Tensor:
    """timm's solarize_add: pixels < thresh get `min(255, pixel + add)` (timm's table, per image)."""
    n, c = img.shape[:2]
    levels = torch.arange(256, device=img.device, dtype=torch.float64)
    lut = torch.where(levels < thresh, (levels + add.view(n, 1, 1)).clamp(max=255), levels).expand(n, c, 256)
    return _apply_lut(lut, _lut_index(img), img.shape)


def color(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Color: blend with the grayscale image."""
    return blend(grayscale(img), img, factor)


def contrast(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Contrast: blend with the rounded mean of the grayscale image."""
    mean = torch.floor(grayscale(img).double().mean(dim=(1, 2, 3)) + 0.5)
    return blend(_per_image(mean), img, factor)


def brightness(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Brightness: blend with black."""
    return img.float().mul_(_per_image(factor, torch.float32)).clamp_(0, 255).to(torch.uint8)


def sharpness(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (kernel 1 1 1 / 1 5 1 / 1 1 1, sum 13).

    PIL's 3x3 filter rounds to uint8 and leaves the 1-pixel border unfiltered; blending then keeps the border.
    """
    c = img.shape[1]
    kernel = torch.ones(c, 1, 3, 3, device=img.device)
    kernel[:, :, 1, 1] = 5
    img_f = img.float()
    smooth = torch.floor(F.conv2d(img_f, kernel.div_(13.0), groups=c).add_(0.5)).clamp_(0, 255)
    degenerate = img_f.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return blend(degenerate, img, factor)


def desaturate(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """timm's desaturate: ImageEnhance.Color at 1 - factor (clamped to [0, 1]; factor 1 is the grayscale image)."""
    return color(img, (1.0 - factor).clamp(0.0, 1.0))


def box_blur_radius(radius: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Pillow's `_gaussian_blur_radius` (BoxBlur.c): the extended box radius whose `passes` repetitions have the
    Gaussian's variance, in C's float32 arithmetic (its two steps through `double` included)."""
    sigma2 = radius.float() * radius.float() / passes
    big_l = torch.sqrt(12.0 * sigma2.double() + 1.0).float()
    small_l = torch.floor((big_l.double() - 1.0) / 2.0).float()
    a = (2 * small_l + 1) * (small_l * (small_l + 1) - 3 * sigma2)
    a = a / (6 * (sigma2 - (small_l + 1) * (small_l + 1)))
    return small_l + a


def box_blur_weights(box_radius: torch.Tensor):
    """Pillow's fixed-point weights of one extended box pass: (integer radius r, weight ww of the 2r+1 inner
    pixels, weight fw of the two outer ones), with ww (2r+1) + 2 fw <= 2**24. int64 tensors."""
    r = box_radius.to(torch.int64)  # C's (int) truncation; the radius is >= 0
    two24 = torch.full((), 2.0 ** 24, dtype=torch.float32, device=box_radius.device)  # a fill: no host copy
    ww = (two24 / (box_radius * 2 + 1)).to(torch.int64)
    fw = (2 ** 24 - (2 * r + 1) * ww) // 2
    return r, ww, fw


def _box_pass_rows(x: torch.Tensor, r: torch.Tensor, ww: torch.Tensor, fw: torch.Tensor) -> torch.Tensor:
    """One extended box pass along the last dim of int64 (N, C, H, W), per image (r, ww, fw of shape (N,)):
    out[i] = round((ww * sum(x[i-r..i+r]) + fw * (x[i-r-1] + x[i+r+1])) / 2**24), edges replicated, as Pillow's
    ImagingLineBoxBlur (its running sum made a prefix sum here)."""
    n, c, h, w = x.shape
    prefix = F.pad(x.cumsum(-1), (1, 0))                     # prefix[..., i] = sum of x[..., :i]
    pos = torch.arange(w, device=x.device).view(1, w)
    lo, hi = pos - r.view(n, 1), pos + r.view(n, 1)          # each position's inner window [lo, hi]
    per_pos = lambda i: i.view(n, 1, 1, w)
    at = lambda t, i: t.gather(-1, per_pos(i).expand(n, c, h, w))
    # the window's part inside the image from the prefix sums; its parts beyond the edges repeat the edge pixel
    inner = at(prefix, hi.clamp(max=w - 1) + 1) - at(prefix, lo.clamp(min=0))
    inner += per_pos((-lo).clamp(min=0)) * x[..., :1] + per_pos((hi - w + 1).clamp(min=0)) * x[..., -1:]
    outer = at(x, (lo - 1).clamp(0, w - 1)) + at(x, (hi + 1).clamp(0, w - 1))
    bulk = inner * ww.view(n, 1, 1, 1) + outer * fw.view(n, 1, 1, 1)
    return (bulk + (1 << 23)) >> 24


def gaussian_blur(img: torch.Tensor, radius: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """PIL ImageFilter.GaussianBlur(radius) per image, bit for bit: `passes` extended box passes along x, each
    rounded to uint8, then `passes` along y (Pillow's ImagingGaussianBlur). Radius 0 leaves the image."""
    r, ww, fw = box_blur_weights(box_blur_radius(radius, passes))
    x = img.to(torch.int64)
    for _ in range(passes):
        x = _box_pass_rows(x, r, ww, fw)
    x = x.transpose(2, 3)
    for _ in range(passes):
        x = _box_pass_rows(x, r, ww, fw)
    out = x.transpose(2, 3).to(torch.uint8)
    return torch.where(_per_image(radius == 0), img, out).contiguous(memory_format=torch.channels_last)


def _lut_index(img: torch.Tensor) -> torch.Tensor:
    """Flat int32 index into per-image, per-channel 256-entry tables: value + 256 * (channel + C * image).

    In the channels_last memory order of `img`; int32 keeps it small (index_select and bincount take it).
    The offsets are tiled along a row's W*C values, so the add runs over long contiguous rows.
    """
    n, c, h, w = img.shape
    offsets = (torch.arange(n, device=img.device).view(n, 1, 1) * c
               + torch.arange(c, device=img.device).repeat(w).view(1, 1, w * c)).int() * 256
    return (img.permute(0, 2, 3, 1).reshape(n, h, w * c).int() + offsets).view(-1)


def _apply_lut(lut: torch.Tensor, index: torch.Tensor, shape) -> torch.Tensor:
    """Tables (N, C, 256) applied through `_lut_index`'s index -> uint8 (N, C, H, W), channels_last."""
    n, c, h, w = shape
    return lut.to(torch.uint8).view(-1).index_select(0, index).view(n, h, w, c).permute(0, 3, 1, 2)


def auto_contrast(img: torch.Tensor, arg=None) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): per channel, the table `int(i * scale + offset)`, PIL's float64 math."""
    lo = img.amin(dim=(2, 3)).double().unsqueeze(2)
    hi = img.amax(dim=(2, 3)).double().unsqueeze(2)
    scale = 255.0 / (hi - lo).clamp(min=1)
    levels = torch.arange(256, device=img.device, dtype=torch.float64)
    lut = torch.trunc(levels * scale + -lo * scale).clamp_(0, 255)
    lut = torch.where(hi > lo, lut, levels)  # PIL leaves a flat channel alone
    return _apply_lut(lut, _lut_index(img), img.shape)


def equalize(img: torch.Tensor, arg=None) -> torch.Tensor:
    """PIL ImageOps.equalize: per channel, the histogram's cumulative sum as a lookup table (PIL's integer steps)."""
    n, c, h, w = img.shape
    index = _lut_index(img)
    # index_add_ rather than bincount, which syncs a GPU to size its output
    ones = torch.ones((), dtype=torch.int32, device=img.device).expand(index.numel())
    hist = torch.zeros(n * c * 256, dtype=torch.int32, device=img.device).index_add_(0, index, ones)
    hist = hist.view(n, c, 256).long()
    levels = torch.arange(256, device=img.device)
    top = torch.where(hist > 0, levels, 0).amax(dim=2, keepdim=True)  # the last non-empty bin of each channel
    step = (h * w - hist.gather(2, top)) // 255
    before = hist.cumsum(2) - hist  # pixels below each level
    lut = ((step // 2) + before).div_(step.clamp(min=1), rounding_mode='floor').clamp_(max=255)
    # PIL keeps the channel when step is 0 (which includes a channel with a single level)
    lut = torch.where(step > 0, lut, levels)
    return _apply_lut(lut, index, img.shape)


def affine_matrix(name: str, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """timm's PIL affine data (output pixel -> input pixel, PIL's continuous coordinates) as (N, 2, 3) float64 on
    the CPU, from a CPU `arg`. Built in numpy: a few values, where torch's per-call overhead costs more."""
    a = arg.numpy()
    m = np.zeros((a.shape[0], 6))
    m[:, 0] = m[:, 4] = 1
    if name == 'ShearX':
        m[:, 1] = a
    elif name == 'ShearY':
        m[:, 3] = a
    elif name == 'TranslateX':
        m[:, 2] = a
    elif name == 'TranslateY':
        m[:, 5] = a
    elif name == 'TranslateXRel':
        m[:, 2] = a * width
    elif name == 'TranslateYRel':
        m[:, 5] = a * height
    elif name == 'Rotate':
        # PIL Image.rotate(angle): counter-clockwise about (w/2, h/2), the output coords rotated by -angle, with
        # PIL's own numbers: angle % 360, then cos and sin rounded to 15 decimals (without that rounding, 45
        # degrees moves a few values of a ramp by 1). Python floats for that, as in PIL.
        rad = [-math.radians(v % 360.0) for v in a.tolist()]
        cos = np.array([round(math.cos(r), 15) for r in rad])
        sin = np.array([round(math.sin(r), 15) for r in rad])
        cx, cy = width / 2.0, height / 2.0
        m[:, 0], m[:, 1], m[:, 3], m[:, 4] = cos, sin, -sin, cos
        m[:, 2] = -cos * cx - sin * cy + cx
        m[:, 5] = sin * cx - cos * cy + cy
    else:
        raise KeyError(f'{name} is not a geometric op')
    return torch.from_numpy(m).view(-1, 2, 3)


GEOMETRIC_OPS = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'TranslateXRel', 'TranslateYRel', 'Rotate')


def warp_affine(img: torch.Tensor, matrix: torch.Tensor, fill: Sequence[int], bicubic: bool) -> torch.Tensor:
    """PIL `Image.transform(AFFINE, matrix, resample, fillcolor=fill)` for a batch, one matrix per image.

    PIL samples at pixel centres, clamps the interpolation taps to the image edge, paints `fill` where the
    source point falls outside the image, and truncates to uint8; `grid_sample(padding_mode='border')`, that
    mask and truncation do the same. PIL's affine bicubic is the a = -1 cubic, torch's the a = -0.75 one: the
    bicubic results differ by a few levels at sharp edges (tests/test_augment_ops.py states the bound).
    """
    n, c, h, w = img.shape
    dev = img.device
    # grid_sample's normalized coordinates, u = 2 x / w - 1 for PIL's continuous x (pixel centres at i + 0.5):
    # u_src = (2 / w) * (m00 x + m01 y + m02) - 1 at x = i + 0.5, y = j + 0.5, built from a row and a column
    xs = torch.arange(w, device=dev, dtype=torch.float64).add_(0.5)
    ys = torch.arange(h, device=dev, dtype=torch.float64).add_(0.5)
    m = matrix.view(n, 6, 1)
    scale = to_device(torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64), dev).view(1, 2, 1)
    # rows (0, 3), (1, 4), (2, 5) of the matrices as strided views: a list index would be a blocking copy
    along_x = ((m[:, 0::3] * xs + m[:, 2::3]) * scale - 1).float()  # (n, 2, w)
    along_y = (m[:, 1::3] * ys * scale).float()  # (n, 2, h)
    grid = torch.empty(n, h, w, 2, device=dev)
    torch.add(along_y.transpose(1, 2).unsqueeze(2), along_x.transpose(1, 2).unsqueeze(1), out=grid)
    u, v = grid.unbind(3)
    inside = (u >= -1) & (u < 1)  # PIL paints the fill where the source point is outside [0, w) x [0, h)
    inside &= v >= -1
    inside &= v < 1
    out = F.grid_sample(img.float(), grid, mode='bicubic' if bicubic else 'bilinear', padding_mode='border',
                        align_corners=False)
    out = _clamp_or_fill(out, inside.unsqueeze(1), fill, (1, c, 1, 1))
    return out.to(dtype=torch.uint8, memory_format=torch.channels_last)


def _clamp_or_fill(out: torch.Tensor, inside: torch.Tensor, fill: Sequence[int], fill_shape) -> torch.Tensor:
    """The resampled `out` clamped to [0, 255] where the source point is `inside` the image, PIL's `fill`
    colour elsewhere (one value per channel, viewed as `fill_shape` against `out`)."""
    fill_t = to_device(torch.tensor(list(fill), dtype=out.dtype), out.device).view(fill_shape)
    return torch.where(inside, out.clamp_(0, 255), fill_t)


# ShearX/TranslateX move pixels along rows only, ShearY/TranslateY along columns only: PIL's 2-D filter then
# samples the other axis exactly at a pixel centre (weights 0, 1, 0, 0), i.e. it is a 1-D resampling.
AXIS_OPS = {'ShearX': 'x', 'TranslateX': 'x', 'TranslateXRel': 'x',
            'ShearY': 'y', 'TranslateY': 'y', 'TranslateYRel': 'y'}


def _pil_taps(frac: torch.Tensor, bicubic: bool):
    """PIL's resampling weights for the taps at offsets (-1, 0, 1, 2) (bicubic, a = -1) or (0, 1) (bilinear)."""
    d = frac
    if not bicubic:
        return (0, 1), (1 - d, d)
    d2, d3 = d * d, d * d * d
    return (-1, 0, 1, 2), (-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, d3 - d2)


def warp_axis(img: torch.Tensor, matrix: torch.Tensor, fill: Sequence[int], bicubic: bool, axis: str):
    """PIL's affine transform for a shear/translate along one axis (`AXIS_OPS`), with PIL's own 1-D filter.

    Along x, output pixel (i, j) reads x_in = j + 0.5 + (s (i + 0.5) + t) with s, t = matrix[0, 1], [0, 2]:
    the fractional part, hence the tap weights, is the same for a whole row, and the taps are a per-row integer
    shift, clamped at the edges like PIL. Along y the image is transposed (one uint8 copy) so that the taps
    are read along rows too. Result as PIL's up to float rounding, cheaper than a 2-D grid_sample.
    """
    if axis == 'y':
        cl = torch.channels_last
        out = _resample_rows(img.transpose(2, 3).contiguous(memory_format=cl), matrix[:, 1, 0], matrix[:, 1, 2],
                             fill, bicubic)
        return out.transpose(2, 3).contiguous(memory_format=cl)
    return _resample_rows(img, matrix[:, 0, 1], matrix[:, 0, 2], fill, bicubic)


def _resample_rows(img: torch.Tensor, s: torch.Tensor, t: torch.Tensor, fill: Sequence[int], bicubic: bool):
    """Row i of image b resampled at x_in = j + 0.5 + s[b] (i + 0.5) + t[b] (PIL coordinates), fill outside."""
    n, c, h, w = img.shape
    dev = img.device
    pos = s.view(n, 1) * (torch.arange(h, device=dev, dtype=torch.float64) + 0.5) + t.view(n, 1)  # (n, h)
    shift = torch.floor(pos)
    taps, weights = _pil_taps((pos - shift).float(), bicubic)
    j = torch.arange(w, device=dev)
    first = j + (shift.long() + torch.arange(n * h, device=dev).view(n, h) * w).unsqueeze(2)  # (n, h, w)
    row_start = (torch.arange(n * h, device=dev) * w).view(n, h, 1)
    src = (j + 0.5 + pos.unsqueeze(2))
    inside = (src >= 0) & (src < w)
    pixels = img.permute(0, 2, 3, 1).reshape(n * h * w, c)  # rows of the channels_last memory
    out = None
    for k, wk in zip(taps, weights):
        index = torch.minimum(torch.maximum(first + k, row_start), row_start + w - 1)  # clamp within the row
        value = pixels.index_select(0, index.view(-1)).view(n, h, w, c).float()
        value.mul_(wk.view(n, h, 1, 1))
        out = value if out is None else out.add_(value)
    out = _clamp_or_fill(out, inside.unsqueeze(3), fill, (c,))  # (n, h, w, c)
    return out.to(torch.uint8).permute(0, 3, 1, 2)


COLOR_OPS = {
    'AutoContrast': auto_contrast,
    'Equalize': equalize,
    'Invert': invert,
    'Posterize': posterize,
    'PosterizeIncreasing': posterize,
    'PosterizeOriginal': posterize,
    'Solarize': solarize,
    'SolarizeIncreasing': solarize,
    'SolarizeAdd': solarize_add,
    'Color': color,
    'ColorIncreasing': color,
    'Contrast': contrast,
    'ContrastIncreasing': contrast,
    'Brightness': brightness,
    'BrightnessIncreasing': brightness,
    'Sharpness': sharpness,
    'SharpnessIncreasing': sharpness,
    'Desaturate': desaturate,
    'GaussianBlur': gaussian_blur,
    'GaussianBlurRand': gaussian_blur,
}


def identity_range(name: str) -> Tuple[float, float]:
    """The arguments [lo, hi] at which timm's op returns the image unchanged, so that it can be skipped (an
    empty range, lo > hi, for ops that always change it).

    A zero shear/translate/rotation samples exactly at pixel centres (PIL's cubic and linear weights are then
    (0, 1, 0, 0)), solarize at 256 and posterize at 8 bits change nothing, enhance at factor 1 blends to itself.
    """
    if name in GEOMETRIC_OPS or name == 'SolarizeAdd':
        return 0.0, 0.0
    if name.startswith('Posterize'):
        return 8.0, math.inf
    if name.startswith('Solarize'):
        return 256.0, math.inf
    if name.startswith(('Color', 'Contrast', 'Brightness', 'Sharpness')):
        return 1.0, 1.0
    if name == 'Desaturate':
        return -math.inf, 0.0
    if name.startswith('GaussianBlur'):
        return 0.0, 0.0
    return math.inf, -math.inf


def is_identity(name: str, arg: torch.Tensor) -> torch.Tensor:
    """Where timm's op at these arguments returns the image unchanged (bool, like `arg`); see `identity_range`."""
    lo, hi = identity_range(name)
    return (arg >= lo) & (arg <= hi)
