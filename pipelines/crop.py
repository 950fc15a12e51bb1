"""Crop windows as pure functions of (seed, epoch, crop key): the same crop in every backend, on resume too. The
key is the sample index (``ShardedOrder.remaining_with_keys``: plus ``copy * num_samples`` for the later copies of
a sample under repeated augmentation); the functions below call it ``index``.

Random-resized-crop parameters drawn from a global RNG inside worker processes or numba ``prange`` loops
depend on thread scheduling, so a resumed run would see other crops. Here each uniform number is a
counter-based hash (splitmix64) of ``(seed, epoch, sample index, draw)``, and the window follows
torchvision's ``RandomResizedCrop.get_params`` algorithm (10 tries, then the clamped-ratio center crop) with
timm's defaults ``scale=(0.08, 1)``, ``ratio=(3/4, 4/3)``.

The horizontal flip that follows the crop in timm's train transform is drawn the same way (``flip_flags``), so
that the decoders can write the crop mirrored at no cost, as FFCV and DALI pipelines do; so is the resize filter
of timm's ``--train-interpolation random`` (``bilinear_flags``: bilinear or bicubic, one each half the time).

Val geometry follows timm's eval transform: resize the shorter side to ``floor(image_size / crop_pct)``
(bicubic), then center-crop ``image_size``.
"""
import math
from typing import Tuple

import numpy as np

__all__ = ["DEFAULT_SCALE", "DEFAULT_RATIO", "INTERPOLATIONS", "hash_uniform", "rrc_windows", "flip_flags",
           "bilinear_flags", "eval_resize_geometry"]

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_NUM_TRIES = 10
_FLIP_DRAW = _NUM_TRIES * 4  # the first draw number after the crop's
_INTERPOLATION_DRAW = _FLIP_DRAW + 1
INTERPOLATIONS = ("bicubic", "bilinear", "random")  # timm's --train-interpolation values the loaders implement
_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def hash_uniform(seed: int, epoch: int, index, draw) -> np.ndarray:
    """Uniform floats in [0, 1), one per (index, draw) pair (broadcast), fixed by (seed, epoch, index, draw)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(_splitmix64(np.asarray([seed], dtype=_U64)) ^ np.asarray([epoch], dtype=_U64))
        x = _splitmix64(key ^ np.asarray(index, dtype=np.int64).astype(_U64))
        x = _splitmix64(x ^ np.asarray(draw, dtype=np.int64).astype(_U64))
    return (x >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def rrc_windows(heights, widths, indices, seed: int, epoch: int,
                scale: Tuple[float, float] = DEFAULT_SCALE,
                ratio: Tuple[float, float] = DEFAULT_RATIO) -> np.ndarray:
    """Random-resized-crop windows ``(top, left, height, width)`` (int64, shape (n, 4)) for images of the given
    sizes, sample ``indices[k]`` of the dataset; vectorised torchvision ``RandomResizedCrop.get_params``."""
    heights = np.asarray(heights, dtype=np.int64).reshape(-1)
    widths = np.asarray(widths, dtype=np.int64).reshape(-1)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    n = len(indices)
    draws = np.arange(_NUM_TRIES * 4).reshape(1, _NUM_TRIES, 4)
    u = hash_uniform(seed, epoch, indices[:, :, None], draws)  # (n, tries, 4)
    area = (heights * widths).astype(np.float64)[:, None]
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[..., 1])
    w = np.round(np.sqrt(target_area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target_area / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = np.argmax(ok, axis=1)
    rows = np.arange(n)
    h, w, u = h[rows, first], w[rows, first], u[rows, first]
    top = np.floor(u[:, 2] * (heights - h + 1)).astype(np.int64)  # torch.randint(0, H - h + 1)
    left = np.floor(u[:, 3] * (widths - w + 1)).astype(np.int64)
    out = np.stack([top, left, h, w], axis=1)

    fallback = ~ok.any(axis=1)
    if fallback.any():  # torchvision's fallback: the whole image, ratio clamped to the range, centered
        fh, fw = heights[fallback], widths[fallback]
        in_ratio = fw / fh
        cw = np.where(in_ratio < min(ratio), fw, np.where(in_ratio > max(ratio),
                                                          np.round(fh * max(ratio)), fw)).astype(np.int64)
        ch = np.where(in_ratio < min(ratio), np.round(fw / min(ratio)),
                      np.where(in_ratio > max(ratio), fh, fh)).astype(np.int64)
        out[fallback] = np.stack([(fh - ch) // 2, (fw - cw) // 2, ch, cw], axis=1)
    return out


def flip_flags(indices, seed: int, epoch: int, p: float) -> np.ndarray:
    """Whether sample ``indices[k]`` is flipped horizontally in ``epoch`` (bool, shape (n,)), with probability ``p``."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    return hash_uniform(seed, epoch, indices, _FLIP_DRAW) < p


def bilinear_flags(indices, seed: int, epoch: int, interpolation: str) -> np.ndarray:
    """Whether sample ``indices[k]``'s crop is resized bilinearly rather than bicubically in ``epoch`` (bool, shape
    (n,)): never for ``'bicubic'``, always for ``'bilinear'``, half the time for ``'random'`` (timm's
    ``RandomResizedCropAndInterpolation`` picks one of the two per image)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r} must be one of {INTERPOLATIONS}")
    if interpolation != "random":
        return np.full(len(indices), interpolation == "bilinear")
    return hash_uniform(seed, epoch, indices, _INTERPOLATION_DRAW) < 0.5


def eval_resize_geometry(height: int, width: int, image_size: int, crop_pct: float):
    """timm/torchvision eval geometry: ``(resized_h, resized_w, top, left)``: the image is resized (bicubic) to
    ``resized_h x resized_w`` (shorter side ``floor(image_size / crop_pct)``, torchvision's ``Resize(int)``
    rounding) and the ``image_size`` square at ``(top, left)`` of the resized image is kept."""
    short = math.floor(image_size / crop_pct)
    if width <= height:
        rw, rh = short, int(short * height / width)
    else:
        rh, rw = short, int(short * width / height)
    top = int(round((rh - image_size) / 2.0))
    left = int(round((rw - image_size) / 2.0))
    return rh, rw, top, left
