"""pipelines.crop and the FFCV backend's resampler, against torchvision/Pillow as the reference.

The resampler is Pillow's bicubic (or bilinear) ``ImagingResample`` (two passes with 8-bit results, in Pillow 13's
order: the vertical pass first when the height shrinks by more than twice the width's pixels). The reference is
what torchvision calls, Pillow's one-call resize, bit for bit.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from pipelines.crop import (DEFAULT_RATIO, DEFAULT_SCALE, bilinear_flags, eval_resize_geometry, flip_flags,
                            hash_uniform, rrc_windows)
from datasets_builders import photo_tiles


def test_hash_uniform_is_deterministic_uniform_and_keyed():
    idx = np.arange(20000)
    u = hash_uniform(0, 0, idx, 0)
    assert np.array_equal(u, hash_uniform(0, 0, idx, 0))
    assert u.min() >= 0 and u.max() < 1
    # uniform: mean 1/2 and variance 1/12 within 5 standard errors
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / len(u))
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / len(u))
    for other in (hash_uniform(1, 0, idx, 0), hash_uniform(0, 1, idx, 0), hash_uniform(0, 0, idx, 1)):
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.05


def test_rrc_windows_are_in_bounds_deterministic_and_change_per_epoch():
    rng = np.random.default_rng(0)
    n = 2000
    heights, widths = rng.integers(8, 400, n), rng.integers(8, 400, n)
    idx = np.arange(n)
    win = rrc_windows(heights, widths, idx, seed=5, epoch=3)
    top, left, h, w = win.T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= heights).all() and (left + w <= widths).all()
    assert np.array_equal(win, rrc_windows(heights, widths, idx, seed=5, epoch=3))
    assert np.array_equal(win[7:9], rrc_windows(heights[7:9], widths[7:9], idx[7:9], seed=5, epoch=3))
    assert (win != rrc_windows(heights, widths, idx, seed=5, epoch=4)).any(axis=1).mean() > 0.9


def test_rrc_window_statistics_match_torchvision():
    """Area fraction and log aspect ratio follow torchvision's RandomResizedCrop.get_params (same image size)."""
    n, H, W = 4000, 300, 400
    win = rrc_windows(np.full(n, H), np.full(n, W), np.arange(n), seed=0, epoch=0)
    torch.manual_seed(0)
    img = torch.empty(3, H, W)
    ref = np.array([transforms.RandomResizedCrop.get_params(img, list(DEFAULT_SCALE), list(DEFAULT_RATIO))
                    for _ in range(n)])
    for stat in (lambda t: t[:, 2] * t[:, 3] / (H * W), lambda t: np.log(t[:, 3] / t[:, 2]),
                 lambda t: (t[:, 0] + t[:, 2] / 2) / H, lambda t: (t[:, 1] + t[:, 3] / 2) / W):
        a, b = stat(win), stat(ref)
        se = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 5 * se
        assert abs(a.std() - b.std()) < 0.1 * b.std()


def test_flip_flags_are_fair_coins_fixed_by_seed_epoch_and_index():
    idx = np.arange(4000)
    a = flip_flags(idx, seed=3, epoch=1, p=0.5)
    assert a.dtype == bool and abs(a.mean() - 0.5) < 0.03
    assert np.array_equal(a[::-1], flip_flags(idx[::-1], seed=3, epoch=1, p=0.5))  # per index, not per position
    assert (a != flip_flags(idx, seed=3, epoch=2, p=0.5)).mean() > 0.4
    assert not flip_flags(idx, 3, 1, 0.0).any() and flip_flags(idx, 3, 1, 1.0).all()


def test_bilinear_flags_follow_the_train_interpolation():
    """timm's --train-interpolation: bicubic never bilinear, bilinear always, random a fair coin per image (timm's
    RandomResizedCropAndInterpolation), fixed by seed, epoch and index, and independent of the flip's coin."""
    idx = np.arange(4000)
    assert not bilinear_flags(idx, 3, 1, "bicubic").any() and bilinear_flags(idx, 3, 1, "bilinear").all()
    a = bilinear_flags(idx, seed=3, epoch=1, interpolation="random")
    assert a.dtype == bool and abs(a.mean() - 0.5) < 0.03
    assert np.array_equal(a[::-1], bilinear_flags(idx[::-1], 3, 1, "random"))
    assert (a != bilinear_flags(idx, 3, 2, "random")).mean() > 0.4
    assert abs((a == flip_flags(idx, 3, 1, 0.5)).mean() - 0.5) < 0.03
    with pytest.raises(ValueError, match="interpolation='nearest' must be one of"):
        bilinear_flags(idx, 3, 1, "nearest")


def test_rrc_fallback_is_torchvisions():
    """A 2x200 image never fits a crop of the allowed ratios: torchvision's deterministic fallback applies."""
    win = rrc_windows([2], [200], [0], seed=0, epoch=0)[0]
    ref = transforms.RandomResizedCrop.get_params(torch.empty(3, 2, 200), list(DEFAULT_SCALE), list(DEFAULT_RATIO))
    assert tuple(win) == tuple(ref)


@pytest.mark.parametrize("size", [(37, 53), (64, 48), (90, 40)])
@pytest.mark.parametrize("image_size, crop_pct", [(32, 0.875), (24, 1.0), (40, 0.9)])
def test_eval_geometry_and_resampler_equal_timm_eval_transform(size, image_size, crop_pct):
    """FFCV's resampler given eval_resize_geometry == torchvision Resize(floor(S/crop_pct)) + CenterCrop, bicubic,
    bit for bit. 90x40 to 24 px shrinks the height by over twice the width's pixels: Pillow's vertical pass first."""
    from pipelines.ffcv_loader import resample
    img = photo_tiles(1, size, seed=1)[0]
    H, W = size
    ref = transforms.Compose([transforms.Resize(math.floor(image_size / crop_pct), InterpolationMode.BICUBIC),
                              transforms.CenterCrop(image_size)])(Image.fromarray(img))
    rh, rw, top, left = eval_resize_geometry(H, W, image_size, crop_pct)
    out = np.zeros((image_size, image_size, 3), np.uint8)
    resample(img, 0, 0, H, W, rh, rw, top, left, 0, 0, out)
    assert np.array_equal(out, np.asarray(ref))


def _horizontal_first(img: Image.Image, out_w: int, out_h: int, resample) -> np.ndarray:
    """Pillow's resize as a horizontal pass (8-bit result) then a vertical pass, each a Pillow call."""
    return np.asarray(img.resize((out_w, img.height), resample).resize((out_w, out_h), resample))


@pytest.mark.parametrize("bilinear", [0, 1])
def test_resampler_equals_torchvision_resized_crop(bilinear):
    """Train path: torchvision's resized_crop (crop, then Pillow's bicubic or bilinear resize) then, every other
    window, the horizontal flip; bit for bit. Some windows take Pillow's vertical pass first, and there the result
    differs from the horizontal-first order (so both orders are checked)."""
    from torchvision.transforms import functional as F
    from pipelines.ffcv_loader import resample
    mode = InterpolationMode.BILINEAR if bilinear else InterpolationMode.BICUBIC
    pil_filter = Image.BILINEAR if bilinear else Image.BICUBIC
    img = photo_tiles(1, (70, 100), seed=2)[0]
    win = rrc_windows(np.full(40, 70), np.full(40, 100), np.arange(40), seed=1, epoch=0)
    order_matters = 0
    for k, ((top, left, h, w), out_size) in enumerate(zip(win, [16, 32, 48, 96, 224] * 8)):
        flip = k % 2
        ref = F.resized_crop(Image.fromarray(img), int(top), int(left), int(h), int(w), [out_size, out_size],
                             mode)
        if flip:
            ref = F.hflip(ref)
        out = np.zeros((out_size, out_size, 3), np.uint8)
        resample(img, top, left, h, w, out_size, out_size, 0, 0, flip, bilinear, out)
        assert np.array_equal(out, np.asarray(ref)), (top, left, h, w, out_size, flip)
        crop = Image.fromarray(img).crop((int(left), int(top), int(left + w), int(top + h)))
        other = _horizontal_first(crop, out_size, out_size, pil_filter)
        order_matters += not np.array_equal(out, other[:, ::-1] if flip else other)
    assert order_matters > 0
