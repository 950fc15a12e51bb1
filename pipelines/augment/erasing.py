"""Random erasing for a whole normalized batch at once, with timm's RandomErasing semantics.

timm's `RandomErasing` (timm.data.random_erasing) loops over the images in Python and draws from Python's
`random` and torch's global RNG: per batch of 64 at 224 px that loop costs more on CPU than the rest of the
normalize step (tools/bench_augment.py prints both), and its draws cannot be replayed from the loader's
per-batch generator, which exact resume needs. This version draws every box for the batch as tensors from the
given CPU generator and paints them with masks; its draws follow timm's algorithm step for step (probability,
count in [min_count, max_count], up to 10 (area, log-aspect) attempts per box, first fitting attempt kept,
uniform top/left), and tests/test_augment_erasing.py checks the resulting statistics against timm's.
"""
import math
from typing import NamedTuple, Optional

import torch

__all__ = ['BatchRandomErasing', 'EraseDraw']


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
        """(top, left, h, w, active) each (N, max_count) int64/bool on the CPU, drawn as timm's loop would."""
        B, K, A = batch_size, self.max_count, self.attempts
        rand = lambda *shape: torch.rand(shape, generator=generator, dtype=torch.float64)
        erase = rand(B) <= self.probability  # timm: `if random.random() > probability: return`
        count = self.min_count + torch.floor(rand(B) * (self.max_count - self.min_count + 1)).long()
        target = (self.min_area + (self.max_area - self.min_area) * rand(B, K, A)) * (height * width)
        target = target / count.view(B, 1, 1)
        aspect = torch.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * rand(B, K, A))
        # Python's round() and torch.round both round half to even
        h = torch.round(torch.sqrt(target * aspect)).long()
        w = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w < width) & (h < height)
        first = fits.long().argmax(dim=2, keepdim=True)  # the attempt timm keeps
        h, w = h.gather(2, first).squeeze(2), w.gather(2, first).squeeze(2)
        top = torch.floor(rand(B, K) * (height - h + 1)).long()  # random.randint(0, H - h)
        left = torch.floor(rand(B, K) * (width - w + 1)).long()
        active = erase[:, None] & (torch.arange(K) < count[:, None]) & fits.any(dim=2)
        return top, left, h, w, active

    def sample(self, batch_size: int, channels: int, height: int, width: int,
               generator: Optional[torch.Generator]) -> EraseDraw:
        """Every image's boxes (and 'rand' colors), drawn on the CPU in a fixed order from `generator`."""
        top, left, h, w, active = self.sample_boxes(batch_size, height, width, generator)
        colors = None
        if self.mode == 'rand':
            colors = torch.randn((batch_size, self.max_count, channels), generator=generator)
        return EraseDraw(top, left, h, w, active, colors)

    def paint(self, images: torch.Tensor, draw: EraseDraw, rows: torch.Tensor,
              noise_generator: Optional[torch.Generator]) -> None:
        """Erase `images[i]` (normalized float, in place) with the boxes of batch row `rows[i]` (CPU indices).

        'pixel' noise comes from `noise_generator`, which lives on the images' device.
        """
        n, C, H, W = images.shape
        dev = images.device
        top, left, h, w, active = (t[rows].to(dev, non_blocking=True)
                                   for t in (draw.top, draw.left, draw.h, draw.w, draw.active))
        ys = torch.arange(H, device=dev).view(1, 1, H)
        xs = torch.arange(W, device=dev).view(1, 1, W)
        in_rows = (ys >= top[..., None]) & (ys < (top + h)[..., None]) & active[..., None]  # (n, K, H)
        in_cols = (xs >= left[..., None]) & (xs < (left + w)[..., None])  # (n, K, W)
        if self.mode == 'rand':
            # boxes are painted in order, a later one over an earlier one, as in timm's loop
            colors = draw.colors[rows].to(dev, dtype=images.dtype, non_blocking=True)
            for k in range(self.max_count):
                box = (in_rows[:, k, :, None] & in_cols[:, k, None, :]).unsqueeze(1)
                images.copy_(torch.where(box, colors[:, k].view(n, C, 1, 1), images))
            return
        mask = (in_rows.unsqueeze(3) & in_cols.unsqueeze(2)).any(dim=1).unsqueeze(1).expand_as(images)
        if self.mode == 'const':
            images.masked_fill_(mask, 0.0)
        else:
            if self.max_count == 1:  # one box: its area, known on the host without a device sync
                count = C * int((draw.h[rows] * draw.w[rows] * draw.active[rows]).sum())
            else:
                count = int(mask.sum())
            noise = torch.randn(count, generator=noise_generator, device=dev, dtype=images.dtype)
            images.masked_scatter_(mask, noise)
