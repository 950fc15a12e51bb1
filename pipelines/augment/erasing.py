"""Random erasing for a whole normalized batch, with timm's RandomErasing semantics and replayable draws.

Why not timm's `RandomErasing` (timm.data.random_erasing) itself: it draws from Python's `random` and torch's
global RNG, so a resumed run cannot replay a batch's boxes from the loader's per-batch generator; and on a GPU
its Python loop launches a few kernels per erased image. Here every box of the batch is drawn up front from the
given CPU generator, following timm's algorithm step for step (probability, count in [min_count, max_count], up
to 10 (area, log-aspect) attempts per box, the first fitting one kept, uniform top/left); tests/
test_augment_erasing.py checks the statistics against timm's. Painting: on accelerators one index_put per box
slot for the whole batch; on the CPU a loop of slice writes over the erased images, as timm does, because there
it is the cheaper one (tools/bench_augment.py prints "random erasing alone": timm's loop and ours both ~5-11 ms
per batch of 64 at 224 px on the 2-core dev machine, while the indexed version took ~28-36 ms).

CPU 'pixel' noise: torch.randn's Mersenne Twister is sequential (~5 ns a value, ~13k values per image at
224 px), so on the CPU the boxes are filled by `_paint_noise` with the counter-based Philox4x32-10 + Box-Muller
normals of neatt/models/logit_noise.py, seeded by one draw from the erasing's generator (the same seed gives
the same boxes and noise, so a resumed run replays its batches). The layout, so that the values can be
re-derived (tests/test_augment_erasing.py does): the painted boxes in (image, slot) order each take
ceil(h * w * C / GROUP) whole groups of logit_noise's stream, starting where the previous box's groups end,
and write their first h * w * C values in the box's (row, column, channel) order. DeviceAugment's CPU kernel
paints the same values into each row as it normalizes it (`box_noise`, `erase_row`): the output, 602 KB of
float32 per image at 224 px, is then written once instead of being read back for a second pass.
"""
import math
from typing import NamedTuple, Optional

import numpy as np
import torch
from numba import njit, parallel_chunksize, prange

from neatt.models.logit_noise import GROUP, LANES, normal_group, philox_key
from neatt.runtime import numba_threads_like_torch, use_threadsafe_numba
from ..transfer import to_device

__all__ = ['BatchRandomErasing', 'EraseDraw', 'NoiseBoxes', 'box_noise', 'erase_row']

use_threadsafe_numba()


@njit(fastmath=True, cache=True)
def box_noise(boxes, group0, j0, j1, k0, k1):
    """The N(0, 1) values of boxes j0 .. j1 - 1 (see `NoiseBoxes`), one box after another: (values, at), box j
    starting at values[at[j - j0]]. Its own function (not inlined), so that the CPU kernel that erases as it
    normalizes (cpu_kernels.py) computes the very values `_paint_noise` does, under the same fast-math flags."""
    at = np.zeros(j1 - j0 + 1, np.int64)
    for j in range(j0, j1):
        at[j - j0 + 1] = at[j - j0] + (boxes[j, 2] * boxes[j, 3] + GROUP - 1) // GROUP * GROUP
    eps = np.empty(at[j1 - j0], np.float32)
    u, v = np.empty(2 * LANES, np.float32), np.empty(2 * LANES, np.float32)
    for j in range(j0, j1):
        for g in range((at[j - j0 + 1] - at[j - j0]) // GROUP):
            first = at[j - j0] + g * GROUP
            normal_group(group0[j] + g, k0, k1, u, v, eps[first:first + GROUP])
    return eps, at


@njit(inline='always')
def erase_row(values, y, boxes, j0, j1, eps, at):
    """Paint row y of an image's (W * C) values with its boxes j0 .. j1 - 1 that cross it, in slot order (a
    later box paints over an earlier one); eps, at: `box_noise` of those boxes."""
    for j in range(j0, j1):
        top, left, h, width = boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3]
        if top <= y < top + h:
            first = at[j - j0] + (y - top) * width
            values[left:left + width] = eps[first:first + width]


@njit(parallel=True, cache=True)
def _paint_noise(rows, boxes, group0, start, k0, k1):
    """Fill the boxes of `rows` ((B, H, W * C) float32) with their noise (`NoiseBoxes`); images in parallel."""
    for b in prange(start.size - 1):
        j0, j1 = start[b], start[b + 1]
        if j1 > j0:
            eps, at = box_noise(boxes, group0, j0, j1, k0, k1)
            for y in range(rows.shape[1]):
                erase_row(rows[b, y], y, boxes, j0, j1, eps, at)


class NoiseBoxes(NamedTuple):
    """Where the CPU 'pixel' noise goes (module docstring), as numpy arrays for the compiled painters.

    boxes (n, 4) int64: top, left * C, h, w * C in the (H, W * C) rows of the channels_last memory, in (image,
    slot) order; image b's boxes are start[b]:start[b + 1] ((B + 1,) int64); box j draws the stream's groups
    from group0[j] on ((n,) int64); (k0, k1): the stream's Philox key.
    """

    boxes: np.ndarray
    group0: np.ndarray
    start: np.ndarray
    k0: np.uint64
    k1: np.uint64


class EraseDraw(NamedTuple):
    """Boxes per image, each (B, max_count) on the CPU; `active` marks the boxes timm would paint."""

    top: torch.Tensor
    left: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor
    active: torch.Tensor
    colors: Optional[torch.Tensor]  # (B, max_count, C) N(0, 1) box colors in 'rand' mode


class BatchRandomErasing:
    """Erase boxes of normalized float images (N, C, H, W) in place; see timm.data.random_erasing.RandomErasing.

    Parameters
    ----------
    probability : float
        Share of images that get erased (timm `--reprob`).
    mode : {'pixel', 'rand', 'const'}
        Per-pixel N(0, 1), one N(0, 1) value per box and channel, or 0 (timm `--remode`).
    max_count : int
        Each erased image gets between `min_count` and `max_count` boxes, each 1/count of the area (`--recount`).
    min_area, max_area, min_aspect, max_aspect, min_count
        timm's defaults.
    """

    attempts = 10  # timm tries 10 (area, aspect) pairs per box and gives up on the box if none fits

    def __init__(self, probability: float = 0.5, mode: str = 'pixel', max_count: int = 1, min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: Optional[float] = None,
                 min_count: int = 1):
        if mode not in ('pixel', 'rand', 'const'):
            raise ValueError(f"random erasing mode must be 'pixel', 'rand' or 'const', got {mode!r}")
        self.probability = probability
        self.mode = mode
        self.min_count = min_count
        self.max_count = max(max_count, min_count)
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

    def sample_boxes(self, batch_size: int, height: int, width: int, generator: Optional[torch.Generator]):
        """(top, left, h, w, active) each (N, max_count) int64/bool on the CPU, drawn as timm's loop would. The
        uniforms come from `generator`, the arithmetic is numpy's (a few hundred values: torch's per-call
        overhead would cost more)."""
        B, K, A = batch_size, self.max_count, self.attempts
        rand = lambda *shape: torch.rand(shape, generator=generator, dtype=torch.float64).numpy()
        erase = rand(B) <= self.probability  # timm: `if random.random() > probability: return`
        count = self.min_count + np.floor(rand(B) * (self.max_count - self.min_count + 1)).astype(np.int64)
        target = (self.min_area + (self.max_area - self.min_area) * rand(B, K, A)) * (height * width)
        target = target / count[:, None, None]
        aspect = np.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * rand(B, K, A))
        # Python's round() and numpy's both round half to even
        h = np.round(np.sqrt(target * aspect)).astype(np.int64)
        w = np.round(np.sqrt(target / aspect)).astype(np.int64)
        fits = (w < width) & (h < height)
        first = fits.argmax(axis=2)[..., None]  # the attempt timm keeps
        h, w = np.take_along_axis(h, first, 2)[..., 0], np.take_along_axis(w, first, 2)[..., 0]
        top = np.floor(rand(B, K) * (height - h + 1)).astype(np.int64)  # random.randint(0, H - h)
        left = np.floor(rand(B, K) * (width - w + 1)).astype(np.int64)
        active = erase[:, None] & (np.arange(K) < count[:, None]) & fits.any(axis=2)
        return tuple(torch.from_numpy(v) for v in (top, left, h, w, active))

    def sample(self, batch_size: int, channels: int, height: int, width: int,
               generator: Optional[torch.Generator]) -> EraseDraw:
        """Every image's boxes (and 'rand' colors), drawn on the CPU in a fixed order from `generator`."""
        top, left, h, w, active = self.sample_boxes(batch_size, height, width, generator)
        colors = None
        if self.mode == 'rand':
            colors = torch.randn((batch_size, self.max_count, channels), generator=generator)
        return EraseDraw(top, left, h, w, active, colors)

    def paint(self, images: torch.Tensor, draw: EraseDraw, noise_generator: Optional[torch.Generator],
              batched: Optional[bool] = None) -> None:
        """Erase the drawn boxes of a normalized float (B, C, H, W) channels_last batch, in place.

        `batched` (default: on any device but the CPU) lists every box pixel as a row of the (B*H*W, C) view
        of the channels_last memory and writes them with one index_put per box slot: a handful of kernels
        for the batch. On the CPU the index tensors cost more than they save (fresh memory for ~300k int64
        per batch of 64 at 224 px: tools/bench_augment.py measured it ~3x slower than timm's loop), so there
        the boxes are written as slices in a loop over the erased images, like timm's, which touches only the
        erased pixels. Either way a later box slot paints over an earlier one, as in timm's loop.
        'pixel' noise comes from `noise_generator`, which lives on the images' device: torch.randn, except
        on the CPU's slice path, where one seed drawn from it drives `_paint_noise` (module docstring).
        """
        if not images.is_contiguous(memory_format=torch.channels_last):
            raise ValueError('BatchRandomErasing.paint needs a channels_last batch')
        if batched is None:
            batched = images.device.type != 'cpu'
        if self.mode == 'pixel' and not batched and images.device.type == 'cpu':
            self._paint_noise_cpu(images, draw, noise_generator)
            return
        for k in range(self.max_count):
            rows = torch.where(draw.active[:, k])[0]
            if rows.numel():
                (self._paint_indexed if batched else self._paint_slices)(images, draw, rows, k, noise_generator)

    def _values(self, count: int, channels: int, color: Optional[torch.Tensor], like: torch.Tensor,
                generator: Optional[torch.Generator]) -> torch.Tensor:
        """(count, channels) fill values: N(0, 1) per pixel, the box's N(0, 1) color, or 0."""
        if self.mode == 'pixel':
            return torch.randn((count, channels), generator=generator, device=like.device, dtype=like.dtype)
        if self.mode == 'rand':
            return color.to(like.device, like.dtype).expand(count, channels)
        return torch.zeros((), device=like.device, dtype=like.dtype).expand(count, channels)

    def _paint_slices(self, images, draw: EraseDraw, rows, k, generator) -> None:
        C = images.shape[1]
        pixels_hwc = images.permute(0, 2, 3, 1)  # (B, H, W, C) view of the channels_last memory
        for b, t, l, h, w in zip(*(v.tolist() for v in (rows, draw.top[rows, k], draw.left[rows, k],
                                                         draw.h[rows, k], draw.w[rows, k]))):
            color = draw.colors[b, k] if draw.colors is not None else None
            pixels_hwc[b, t:t + h, l:l + w] = self._values(h * w, C, color, images, generator).view(h, w, C)

    def noise_boxes(self, draw: EraseDraw, channels: int, generator: Optional[torch.Generator]) -> NoiseBoxes:
        """The CPU 'pixel' noise plan of `draw` (`NoiseBoxes`), its key drawn from `generator` (one draw)."""
        k0, k1 = philox_key(generator)
        active = draw.active.numpy()
        b, k = np.nonzero(active)  # row-major: (image, slot) order
        top, left, h, w = (v.numpy()[b, k] for v in (draw.top, draw.left, draw.h, draw.w))
        boxes = np.stack([top, left * channels, h, w * channels], 1)
        groups = (boxes[:, 2] * boxes[:, 3] + GROUP - 1) // GROUP
        start = np.zeros(active.shape[0] + 1, np.int64)
        np.cumsum(active.sum(1), out=start[1:])
        return NoiseBoxes(boxes, np.cumsum(groups) - groups, start, k0, k1)

    def _paint_noise_cpu(self, images, draw: EraseDraw, generator) -> None:
        B, C, H, W = images.shape
        noise = self.noise_boxes(draw, C, generator)
        numba_threads_like_torch()
        rows = images.permute(0, 2, 3, 1).view(B, H, W * C).numpy()
        with parallel_chunksize(1):  # an image to each free thread: box areas differ up to 16x
            _paint_noise(rows, *noise)

    def _paint_indexed(self, images, draw: EraseDraw, rows, k, generator) -> None:
        B, C, H, W = images.shape
        dev = images.device
        pixels = images.permute(0, 2, 3, 1).view(B * H * W, C)
        top, left, h, w = (t[rows, k] for t in (draw.top, draw.left, draw.h, draw.w))
        area = h * w
        total = int(area.sum())  # known on the host: no device sync
        colors = draw.colors[rows, k] if draw.colors is not None else None
        # the boxes' host-drawn geometry to the device, queued without waiting for it (pipelines.transfer)
        first = area.cumsum(0) - area
        rows, top, left, w, area, first = (to_device(t, dev) for t in (rows, top, left, w, area, first))
        box = torch.repeat_interleave(torch.arange(rows.numel(), device=dev), area, output_size=total)
        offset = torch.arange(total, device=dev) - first[box]
        bw = w[box]
        index = (rows[box] * H + top[box] + offset // bw) * W + left[box] + offset % bw
        colors = to_device(colors, dev).to(images.dtype)[box] if colors is not None else None
        if self.mode == 'rand':
            pixels.index_put_((index,), colors)
        else:
            pixels.index_put_((index,), self._values(total, C, None, images, generator))
