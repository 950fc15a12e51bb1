"""timm's Mixup / CutMix, with its per-image modes (`--mixup-mode elem` and `pair`) run as one blend of the batch.

timm's `Mixup._mix_elem` and `_mix_pair` loop over the images in Python, a few small ops per image (so a few
hundred kernel launches per step on a GPU), and end with `torch.tensor(lam_batch, device=...)`: a copy from
pageable memory, which makes the host wait until the GPU's queue has drained. Here timm's own draws
(`_params_per_elem`, then `cutmix_bbox_and_lam` image by image, in timm's order, so numpy's random stream is
consumed as in timm) become per-image weights and boxes, which go to the device through pinned memory
(pipelines.transfer), and one blend mixes the whole batch. Float32 batches (the trainer's) come out bit for bit as
timm's loop gives them (tests/test_mixup.py). `--mixup-mode batch` is timm's own code.
"""
import numpy as np
import torch
from timm.data import Mixup as TimmMixup
from timm.data.mixup import cutmix_bbox_and_lam

from pipelines.transfer import to_device

__all__ = ['Mixup']

_SELF, _OTHER, _BOX = 0, 1, slice(2, 6)  # columns of the per-image table: weights, then the box (yl, yh, xl, xh)


class Mixup(TimmMixup):
    """timm's `Mixup` (same arguments and results) whose 'elem' and 'pair' modes mix the batch at once."""

    def _mix_elem(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix_per_image(x, pair=False)

    def _mix_pair(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix_per_image(x, pair=True)

    def _mix_per_image(self, x: torch.Tensor, pair: bool) -> torch.Tensor:
        """Mix x (B, C, H, W) in place with its reverse, image i with image B - 1 - i, and return the (B, 1)
        lam of each image. With `pair`, images i and B - 1 - i share one draw, as in timm."""
        n = len(x) // 2 if pair else len(x)
        lam_batch, use_cutmix = self._params_per_elem(n)
        if (lam_batch == 1.).all():  # nothing to mix (mixing switched off, or no image drew it)
            return torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
        # per image: timm's x[i] * lam + x[B - 1 - i] * (1 - lam) with the weights as float32 rounds them, or, for
        # cutmix, the partner's pixels inside the box; lam == 1 leaves the image as it is
        table = np.zeros((n, 6))
        table[:, _SELF] = 1.
        for i in range(n):
            if lam_batch[i] == 1.:
                continue
            if use_cutmix[i]:
                box, lam_batch[i] = cutmix_bbox_and_lam(x[i].shape, lam_batch[i], ratio_minmax=self.cutmix_minmax,
                                                        correct_lam=self.correct_lam)
                table[i, _BOX] = box
            else:
                table[i, _SELF], table[i, _OTHER] = lam_batch[i], 1. - lam_batch[i]
        if pair:  # image B - 1 - i mixes with image i, by the same draw
            table, lam_batch = np.concatenate((table, table[::-1])), np.concatenate((lam_batch, lam_batch[::-1]))
        table = to_device(torch.from_numpy(table), x.device)[:, :, None, None, None]  # (B, 6, 1, 1, 1)
        rows = torch.arange(x.shape[-2], device=x.device)[:, None]
        cols = torch.arange(x.shape[-1], device=x.device)
        yl, yh, xl, xh = table[:, _BOX].unbind(1)
        in_box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)  # (B, 1, H, W)
        w_self = torch.where(in_box, 0., table[:, _SELF].to(x.dtype))
        w_other = torch.where(in_box, 1., table[:, _OTHER].to(x.dtype))
        x.copy_(x * w_self + x.flip(0) * w_other)
        return to_device(torch.from_numpy(lam_batch).to(x.dtype), x.device).unsqueeze(1)
