"""DeviceAugment: timm's train-time transform after the crop, for a uint8 batch on any device, per sample.

Order as in timm's `transforms_imagenet_train` after RandomResizedCrop: horizontal flip -> auto-augment on uint8
(0..255, PIL's rounding) -> /255 -> normalize -> random erasing (on normalized values, so 'pixel' noise is N(0, 1)).

Randomness: every per-image decision (flip, sub-policy or ops, apply flags, magnitudes, signs, erasing boxes) is
drawn from one *CPU* `torch.Generator`. The choices then live on the host, so the images an op touches are
gathered without a GPU->CPU sync, and one seed gives the same choices on CPU and GPU (resume and tests rely on
it). The per-pixel erasing noise is drawn on the batch's device from a generator seeded by that CPU generator.
"""
from typing import Optional

import torch

from .config import AugmentConfig
from .erasing import BatchRandomErasing
from .ops import COLOR_OPS, GEOMETRIC_OPS, affine_matrix, warp_affine
from .policy import BatchPolicy

__all__ = ['DeviceAugment']


class DeviceAugment:
    """Callable: `aug(uint8 (B, C, H, W) batch, cpu_generator) -> float32 normalized channels_last batch`.

    Parameters
    ----------
    cfg : AugmentConfig
        aa policy, erasing, flip, mean/std; `AugmentConfig(aa=None, reprob=0, hflip=0)` is eval (normalize only).
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.policy = None
        if cfg.aa:
            hparams = dict(translate_const=int(cfg.img_size * 0.45), img_mean=cfg.fill)
            self.policy = BatchPolicy(cfg.aa, hparams, random_interpolation=cfg.interpolation == 'random',
                                      bicubic_default=cfg.interpolation == 'bicubic')
        self.erasing = (BatchRandomErasing(cfg.reprob, mode=cfg.remode, max_count=cfg.recount)
                        if cfg.reprob > 0 else None)
        std = torch.tensor(cfg.std, dtype=torch.float32)
        # x / 255 - mean) / std == x * scale - shift
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
        self._shift = (torch.tensor(cfg.mean, dtype=torch.float32) / std).view(1, -1, 1, 1)
        self._device_generators = {}

    def __repr__(self):
        return f'{type(self).__name__}({self.cfg})'

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Augment and normalize `images` (uint8, NCHW, any memory format, any device; left unchanged).

        `generator` is a CPU torch.Generator (seed it per batch for reproducible augmentation); None uses
        torch's default CPU generator.
        """
        self._check(images, generator)
        device = images.device
        x = images
        if self.cfg.hflip > 0:
            flip = torch.rand(x.shape[0], generator=generator) < self.cfg.hflip
            x = torch.where(flip.to(device, non_blocking=True).view(-1, 1, 1, 1), x.flip(3), x)
        if self.policy is not None:
            if x is images:
                x = x.clone()
            self._auto_augment(x, generator)
        out = torch.empty(x.shape, dtype=torch.float32, device=device, memory_format=torch.channels_last)
        torch.mul(x, self._scale.to(device), out=out)
        out.sub_(self._shift.to(device))
        if self.erasing is not None:
            self.erasing(out, generator, self._device_generator(device, generator))
        return out

    def _auto_augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> None:
        """Apply the drawn ops in place, slot by slot; each op runs once on the images that drew it."""
        B, C, H, W = x.shape
        draw = self.policy.sample(B, generator, 'cpu')
        names = self.policy.op_names
        dev = x.device
        for slot in range(self.policy.num_layers):
            op, apply, arg = draw.op[:, slot], draw.apply[:, slot], draw.arg[:, slot]
            geo_rows, geo_mats, geo_bicubic = [], [], []
            for i, name in enumerate(names):
                rows = torch.where(apply & (op == i))[0]
                if rows.numel() == 0:
                    continue
                if name in GEOMETRIC_OPS:
                    geo_rows.append(rows)
                    geo_mats.append(affine_matrix(name, arg[rows], H, W))
                    geo_bicubic.append(draw.bicubic[rows, slot])
                else:
                    rows_d = rows.to(dev, non_blocking=True)
                    x[rows_d] = COLOR_OPS[name](x[rows_d], arg[rows].to(dev, non_blocking=True))
            if geo_rows:
                rows, mats, bicubic = torch.cat(geo_rows), torch.cat(geo_mats), torch.cat(geo_bicubic)
                for mode in (True, False):  # one grid_sample per interpolation mode
                    sel = bicubic == mode
                    if sel.any():
                        rows_d = rows[sel].to(dev, non_blocking=True)
                        x[rows_d] = warp_affine(x[rows_d], mats[sel].to(dev), self.cfg.fill, bicubic=mode)

    def _device_generator(self, device: torch.device, generator: Optional[torch.Generator]):
        """The CPU generator itself on CPU; elsewhere a device generator re-seeded from it (deterministic)."""
        if device.type == 'cpu':
            return generator
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        if device not in self._device_generators:
            self._device_generators[device] = torch.Generator(device=device)
        return self._device_generators[device].manual_seed(seed)

    def _check(self, images: torch.Tensor, generator: Optional[torch.Generator]) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f'{images.dtype} tensor of shape {tuple(images.shape)}' if isinstance(images, torch.Tensor) \
                else type(images).__name__
            raise ValueError(f'DeviceAugment expects a uint8 (B, C, H, W) batch, got {got}')
        if images.shape[1] != len(self.cfg.mean):
            raise ValueError(f'DeviceAugment: batch has {images.shape[1]} channels but AugmentConfig.mean has '
                             f'{len(self.cfg.mean)} values')
        if self.policy is not None and images.shape[1] != 3:
            raise ValueError(f'--aa {self.cfg.aa!r} needs RGB images (3 channels), got {images.shape[1]}')
        if generator is not None and generator.device.type != 'cpu':
            raise ValueError(f'DeviceAugment draws its choices on the CPU: pass a CPU torch.Generator, '
                             f'got one on {generator.device}')
