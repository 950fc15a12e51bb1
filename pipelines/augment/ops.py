"""Batched tensor twins of timm's PIL auto-augment ops: uint8 (N, C, H, W) in, uint8 out, one argument per image.

Each op follows the PIL function timm calls (timm.data.auto_augment), including PIL's integer rounding, so that
a chain of ops quantizes like timm's does. Geometric ops are one `grid_sample` for the images that need them,
with a 2x3 matrix each. tests/test_augment_ops.py compares every op with timm's PIL op on real photos.
"""
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    'GEOMETRIC_OPS', 'COLOR_OPS', 'affine_matrix', 'warp_affine', 'blend', 'grayscale',
    'invert', 'posterize', 'solarize', 'solarize_add', 'color', 'contrast', 'brightness', 'sharpness',
    'auto_contrast', 'equalize',
]


def _per_image(arg: torch.Tensor) -> torch.Tensor:
    return arg.view(-1, 1, 1, 1)


def blend(degenerate: torch.Tensor, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL `Image.blend(degenerate, img, factor)` for uint8: float32 `d + f * (i - d)`, clipped, truncated."""
    d = degenerate.float()
    out = d + _per_image(factor).float() * (img.float() - d)
    return out.clamp_(0, 255).to(torch.uint8)


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, as uint8 (N, 1, H, W)."""
    r, g, b = img.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(1)


def invert(img: torch.Tensor, arg=None) -> torch.Tensor:
    """PIL ImageOps.invert."""
    return 255 - img


def posterize(img: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the `bits` high bits; 0 bits gives a black image (the TF EfficientNet intent), >= 8 keeps the image.

    PIL's ImageOps.posterize (Pillow >= 11) rejects 0 bits, which timm's v0 policy asks for at magnitude < 2.5.
    """
    shift = (8 - bits.clamp(0, 8)).long()
    mask = ((0xFF << shift) & 0xFF).to(torch.uint8)
    return img & _per_image(mask)


def solarize(img: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.solarize: invert the pixels >= thresh (thresh 256 leaves the image unchanged)."""
    return torch.where(img.short() >= _per_image(thresh).short(), 255 - img, img)


def solarize_add(img: torch.Tensor, add: torch.Tensor, thresh: int = 128) -> torch.Tensor:
    """timm's solarize_add: pixels < thresh get `min(255, pixel + add)`."""
    added = (img.short() + _per_image(add).short()).clamp_(max=255).to(torch.uint8)
    return torch.where(img < thresh, added, img)


def color(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Color: blend with the grayscale image."""
    return blend(grayscale(img).expand_as(img), img, factor)


def contrast(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Contrast: blend with the rounded mean of the grayscale image."""
    gray = grayscale(img)
    mean = torch.floor(gray.flatten(1).double().mean(1) + 0.5)
    return blend(_per_image(mean).expand_as(img), img, factor)


def brightness(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Brightness: blend with black."""
    return blend(torch.zeros_like(img), img, factor)


_SMOOTH = torch.tensor([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0  # PIL ImageFilter.SMOOTH


def sharpness(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH, whose 1-pixel border is the unfiltered image."""
    n, c, h, w = img.shape
    kernel = _SMOOTH.to(img.device).expand(c, 1, 3, 3)
    smooth = F.conv2d(img.float(), kernel, groups=c)
    degenerate = img.clone()
    degenerate[:, :, 1:-1, 1:-1] = torch.floor(smooth + 0.5).clamp_(0, 255).to(torch.uint8)
    return blend(degenerate, img, factor)


def _apply_lut(img: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per image and channel lookup: img (N, C, H, W) uint8, lut (N, C, 256) -> uint8."""
    n, c, h, w = img.shape
    return lut.to(torch.uint8).gather(2, img.reshape(n, c, h * w).long()).view(n, c, h, w)


def auto_contrast(img: torch.Tensor, arg=None) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): per channel, stretch [min, max] to [0, 255]; flat channels kept."""
    lo = img.amin(dim=(2, 3)).double()
    hi = img.amax(dim=(2, 3)).double()
    scale = 255.0 / (hi - lo).clamp(min=1)
    offset = -lo * scale
    levels = torch.arange(256, device=img.device, dtype=torch.float64)
    lut = torch.trunc(levels * scale[..., None] + offset[..., None]).clamp_(0, 255)
    lut = torch.where((hi > lo)[..., None], lut, levels)
    return _apply_lut(img, lut)


def equalize(img: torch.Tensor, arg=None) -> torch.Tensor:
    """PIL ImageOps.equalize: per channel, the histogram's cumulative sum as a lookup table (PIL's integer steps)."""
    n, c, h, w = img.shape
    flat = img.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=img.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    top = flat.amax(1)  # the last non-empty bin
    step = (h * w - hist.gather(1, top[:, None]).squeeze(1)) // 255
    before = hist.cumsum(1) - hist  # pixels below each level
    lut = ((step // 2)[:, None] + before).div(step.clamp(min=1)[:, None], rounding_mode='floor').clamp_(max=255)
    # PIL keeps the channel when it has one level (then step is 0 too) or when step is 0
    levels = torch.arange(256, device=img.device).expand(n * c, 256)
    lut = torch.where((step > 0)[:, None], lut, levels)
    return _apply_lut(img, lut.view(n, c, 256))


def affine_matrix(name: str, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """timm's PIL affine data (output pixel -> input pixel, PIL's continuous coordinates) as (N, 2, 3) float64."""
    n = arg.shape[0]
    m = torch.zeros(n, 2, 3, dtype=torch.float64, device=arg.device)
    m[:, 0, 0] = 1
    m[:, 1, 1] = 1
    if name == 'ShearX':
        m[:, 0, 1] = arg
    elif name == 'ShearY':
        m[:, 1, 0] = arg
    elif name == 'TranslateX':
        m[:, 0, 2] = arg
    elif name == 'TranslateY':
        m[:, 1, 2] = arg
    elif name == 'TranslateXRel':
        m[:, 0, 2] = arg * width
    elif name == 'TranslateYRel':
        m[:, 1, 2] = arg * height
    elif name == 'Rotate':
        # PIL Image.rotate(angle): counter-clockwise about (w/2, h/2), matrix of -angle applied to output coords
        a = torch.deg2rad(-arg)
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = width / 2.0, height / 2.0
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, sin, -sin, cos
        m[:, 0, 2] = cos * -cx + sin * -cy + cx
        m[:, 1, 2] = -sin * -cx + cos * -cy + cy
    else:
        raise KeyError(name)
    return m


GEOMETRIC_OPS = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'TranslateXRel', 'TranslateYRel', 'Rotate')


def warp_affine(img: torch.Tensor, matrix: torch.Tensor, fill: Sequence[int], bicubic: bool) -> torch.Tensor:
    """PIL `Image.transform(AFFINE, matrix, resample, fillcolor=fill)` for a batch, one matrix per image.

    PIL samples at pixel centres, clamps the interpolation taps to the image edge, and paints `fill` where the
    source point falls outside the image; `grid_sample(padding_mode='border')` plus that mask does the same.
    PIL's affine bicubic uses a = -1, torch's a = -0.75: bicubic results differ by a few levels at sharp edges.
    """
    n, c, h, w = img.shape
    dev = img.device
    xs = torch.arange(w, device=dev, dtype=torch.float64) + 0.5
    ys = torch.arange(h, device=dev, dtype=torch.float64) + 0.5
    m = matrix.view(n, 2, 3, 1, 1)
    # source point of every output pixel centre, in PIL's continuous pixel coordinates
    src_x = m[:, 0, 0] * xs + m[:, 0, 1] * ys[:, None] + m[:, 0, 2]
    src_y = m[:, 1, 0] * xs + m[:, 1, 1] * ys[:, None] + m[:, 1, 2]
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    grid = torch.stack((src_x * (2.0 / w) - 1, src_y * (2.0 / h) - 1), dim=-1).float()
    out = F.grid_sample(img.float(), grid, mode='bicubic' if bicubic else 'bilinear', padding_mode='border',
                        align_corners=False)
    out = torch.floor(out.add_(0.5)).clamp_(0, 255).to(torch.uint8)
    fill_t = torch.tensor(list(fill), dtype=torch.uint8, device=dev).view(1, c, 1, 1)
    return torch.where(inside.unsqueeze(1), out, fill_t)


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
}
