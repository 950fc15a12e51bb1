"""DeviceAugment: timm's train-time transform after the crop, for a uint8 batch on any device, per sample.

Order as in timm's `transforms_imagenet_train` after RandomResizedCrop: horizontal flip -> auto-augment on uint8
(0..255, PIL's rounding) -> color jitter (uint8) -> /255 -> normalize -> random erasing (on normalized values, so
'pixel' noise is N(0, 1)).

Randomness: every per-image choice (flip, sub-policy or ops, apply flags, magnitudes, signs, erasing boxes) is
drawn up front for the whole batch from one *CPU* `torch.Generator`. The choices then live on the host, so the
images an op touches are gathered without a GPU->CPU sync, and one seed gives the same choices on CPU and GPU
(resume and the tests rely on it). Only the per-pixel erasing noise is drawn on the batch's device, from a
generator seeded by the CPU one.

Two ways to run the drawn choices, with the same results up to the warps' interpolation:

* CPU batches (default): cpu_kernels.py, one compiled pass per image (flip, its ops in Pillow's exact
  arithmetic, normalization, 'pixel' erasing), images spread over torch's thread count; `compiled_cpu=False`
  turns it off.
* Any device: the batched torch ops of ops.py. Per stage (the flip, then each aa slot) the images are sorted by
  the op they drew (one row gather of the uint8 batch), so every op runs once, on one contiguous slice holding
  exactly the images that drew it: the work follows what the policy asks for, not (number of ops) x (batch), and
  there is no per-image Python loop. On CPU a slice goes through in chunks of a few images so that the float
  temporaries stay small; on an accelerator it is one call.

Either way ops that change nothing at their drawn argument (`ops.identity_range`) are skipped.
"""
import dataclasses
from typing import NamedTuple, Optional

import numpy as np
import torch

from ..transfer import to_device
from . import cpu_kernels
from .config import AugmentConfig
from .erasing import BatchRandomErasing
from .ops import AXIS_OPS, COLOR_OPS, GEOMETRIC_OPS, affine_matrix, identity_range, warp_affine, warp_axis
from .policy import BatchPolicy

__all__ = ['DeviceAugment']

_CPU_CHUNK = 8  # images per op call of the batched path on CPU
JITTER_OPS = ('Brightness', 'Contrast', 'Color')  # ColorJitter's brightness, contrast, saturation: PIL ImageEnhance
_FLIP = 10_000  # group key of the horizontal flip stage (aa keys are op indices, far below)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] for a channels_last batch, as one row gather on its (B, H*W*C) memory (stays channels_last)."""
    b, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b, h * w * c)
    return rows.index_select(0, to_device(index, x.device)).view(-1, h, w, c).permute(0, 3, 1, 2)


class _OpPlan(NamedTuple):
    """A batch's drawn ops, (B, L) per slot: group key (-1: nothing to do), argument, PIL affine matrix."""

    key: torch.Tensor
    arg: torch.Tensor
    mats: torch.Tensor


class DeviceAugment:
    """Callable: `aug(uint8 (B, C, H, W) batch, cpu_generator) -> float32 normalized channels_last batch`.

    Parameters
    ----------
    cfg : AugmentConfig
        aa policy, erasing, flip, mean/std; `AugmentConfig(aa=None, reprob=0, hflip=0)` is eval (normalize only).
    chunk_size : int, optional
        Batched torch path only: at most this many images per op call; default 8 on CPU, the whole batch
        elsewhere. Speed only: the result does not depend on it.
    compiled_cpu : bool
        On CPU batches, run the compiled per-image chain of cpu_kernels.py (default); False runs the batched
        torch ops that accelerators run (tools/bench_augment.py compares the two).
    """

    def __init__(self, cfg: AugmentConfig, chunk_size: Optional[int] = None, compiled_cpu: bool = True):
        self.cfg = cfg
        self.chunk_size = chunk_size
        self.compiled_cpu = compiled_cpu
        self.policy = None
        if cfg.aa:
            self.policy = BatchPolicy(cfg.aa, cfg.aa_hparams, random_interpolation=cfg.interpolation == 'random',
                                      bicubic_default=cfg.interpolation == 'bicubic')
        # the ops a plan can hold: the policy's, then color jitter's (its slots follow the aa's, as in timm)
        self.op_names = (self.policy.op_names if self.policy else []) + (list(JITTER_OPS) if cfg.color_jitter else [])
        if self.op_names:
            names = self.op_names
            # per op index: its group key (the index for color ops; for the warps len(names) + 2 * kind, kind 0 for
            # a 2-D warp, 1 / 2 for a 1-D one along x / y (ops.AXIS_OPS), + 1 where bicubic), whether it warps,
            # and the arguments at which it changes nothing (skipped, like ops drawn but not applied: key -1)
            self._op_key = np.array([len(names) + 2 * {'x': 1, 'y': 2}.get(AXIS_OPS.get(name), 0)
                                     if name in GEOMETRIC_OPS else i for i, name in enumerate(names)], np.int64)
            self._op_warp = np.array([name in GEOMETRIC_OPS for name in names])
            self._identity_lo, self._identity_hi = np.array([identity_range(name) for name in names], np.float64).T
            # group key -> cpu_kernels op code: color ops by name, then 3 warp kinds x bicubic
            warps = [cpu_kernels.WARP_BICUBIC if bicubic else cpu_kernels.WARP_BILINEAR
                     for _ in range(3) for bicubic in (0, 1)]
            self._kernel_code = torch.tensor(
                [cpu_kernels.OP_CODES.get(name, cpu_kernels.NONE) for name in names] + warps)
        self.erasing = (BatchRandomErasing(cfg.reprob, mode=cfg.remode, max_count=cfg.recount)
                        if cfg.reprob > 0 else None)
        std = torch.tensor(cfg.std, dtype=torch.float32)
        # (x / 255 - mean) / std == x * scale - shift
        self._scale = 1.0 / (255.0 * std)
        self._shift = torch.tensor(cfg.mean, dtype=torch.float32) / std
        self._tiled = {}
        self._noise_generators = {}

    def for_img_size(self, img_size: int) -> 'DeviceAugment':
        """The same augmentation for batches of another size (timm's translate_const follows `img_size`)."""
        return DeviceAugment(dataclasses.replace(self.cfg, img_size=img_size), self.chunk_size, self.compiled_cpu)

    def __repr__(self):
        return f'{type(self).__name__}({self.cfg})'

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Augment and normalize `images` (uint8 (B, C, H, W), any memory format and device; left unchanged).

        `generator`: a CPU torch.Generator (seed it per batch for reproducible augmentation); None uses torch's
        default CPU generator. Returns float32 (B, C, H, W) in channels_last on `images.device`: `out` if given
        (a buffer of that kind the caller recycles; on CPU fresh memory costs page faults), else a new tensor.
        """
        self._check(images, generator)
        if out is not None and (out.shape != images.shape or out.dtype != torch.float32 or out.device != images.device
                                or not out.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError(f'DeviceAugment: out must be a float32 channels_last tensor of shape '
                             f'{tuple(images.shape)} on {images.device}')
        B, C, H, W = images.shape
        device = images.device
        flip = torch.rand(B, generator=generator) < self.cfg.hflip if self.cfg.hflip > 0 else None
        plan = self._draw_ops(B, H, W, generator) if self.op_names else None
        erase = self.erasing.sample(B, C, H, W, generator) if self.erasing is not None else None
        noise_gen = self._noise_generator(device, generator) if erase is not None else None
        if out is None:
            out = torch.empty((B, C, H, W), dtype=torch.float32, device=device, memory_format=torch.channels_last)
        compiled = device.type == 'cpu' and self.compiled_cpu
        # the CPU kernel paints 'pixel' boxes as it normalizes, with the noise BatchRandomErasing.paint would draw
        in_kernel = compiled and erase is not None and self.erasing.mode == 'pixel'
        if compiled:
            self._augment_compiled(images, flip, plan, out,
                                   self.erasing.noise_boxes(erase, C, noise_gen) if in_kernel else None)
        else:
            self._augment_batched(images, flip, plan, out)
        if erase is not None and not in_kernel:
            self.erasing.paint(out, erase, noise_gen)
        return out

    def _augment_compiled(self, images: torch.Tensor, flip: Optional[torch.Tensor], plan: Optional[_OpPlan],
                          out: torch.Tensor, noise) -> None:
        """CPU: every image's flip, ops, normalization and `noise` (erasing.NoiseBoxes or None) in one compiled
        pass (cpu_kernels.py)."""
        B = images.shape[0]
        if plan is None:  # no aa: zero op slots
            plan = _OpPlan(key=torch.full((B, 0), -1), arg=torch.zeros(B, 0, dtype=torch.float64),
                           mats=torch.zeros(B, 0, 2, 3, dtype=torch.float64))
            code = plan.key
        else:
            code = torch.where(plan.key >= 0, self._kernel_code[plan.key.clamp(min=0)], cpu_kernels.NONE)
        cpu_kernels.augment(images.contiguous(memory_format=torch.channels_last),
                            flip if flip is not None else torch.zeros(B, dtype=torch.bool), code, plan.arg,
                            plan.mats, self.cfg.fill, self._scale, self._shift, out, noise)

    def _augment_batched(self, images: torch.Tensor, flip: Optional[torch.Tensor], plan: Optional[_OpPlan],
                         out: torch.Tensor) -> None:
        """Any device: the batched torch ops of ops.py, one call per op and group of images, then normalize."""
        B = images.shape[0]
        stages = []  # (key (B,), args (B,), mats (B, 2, 3) or None): the flip, then each aa slot
        if flip is not None:
            stages.append((torch.where(flip, _FLIP, -1), None, None))
        if plan is not None:
            stages += [(plan.key[:, s], plan.arg[:, s], plan.mats[:, s]) for s in range(plan.key.shape[1])]
        chunk = self.chunk_size or (_CPU_CHUNK if images.device.type == 'cpu' else B)
        x = images.contiguous(memory_format=torch.channels_last)
        order = torch.arange(B)  # x[j] holds batch image order[j]
        for key, args, mats in stages:
            key = key[order]
            if (key < 0).all():
                continue
            if x.data_ptr() == images.data_ptr():
                x = x.clone(memory_format=torch.channels_last)  # private: the ops write into it
            # sort the images by op, so that each op reads and writes one contiguous slice of x
            perm = torch.argsort(key, stable=True)
            x, order, key = _take(x, perm), order[perm], key[perm]
            values, counts = torch.unique_consecutive(key, return_counts=True)
            start = 0
            for k, n in zip(values.tolist(), counts.tolist()):
                for lo in range(start, start + n, chunk) if k >= 0 else ():
                    hi = min(lo + chunk, start + n)
                    rows = order[lo:hi]
                    x[lo:hi] = self._run_op(k, x[lo:hi], None if args is None else args[rows],
                                            None if mats is None else mats[rows])
                start += n
        if not torch.equal(order, torch.arange(B)):
            x = _take(x, torch.argsort(order))
        for lo in range(0, B, chunk):
            hi = min(lo + chunk, B)
            self._normalize(x[lo:hi], out[lo:hi])

    def _run_op(self, key: int, x: torch.Tensor, args: Optional[torch.Tensor], mats: Optional[torch.Tensor]):
        """Apply the op of group `key` to the images `x`, with their CPU-drawn arguments or matrices."""
        dev = x.device
        if key == _FLIP:
            return x.flip(3)
        geometric = len(self.op_names)
        if key >= geometric:
            kind, bicubic = divmod(key - geometric, 2)
            mats = to_device(mats, dev)
            if kind == 0:
                return warp_affine(x, mats, self.cfg.fill, bicubic=bool(bicubic))
            return warp_axis(x, mats, self.cfg.fill, bicubic=bool(bicubic), axis='xy'[kind - 1])
        return COLOR_OPS[self.op_names[key]](x, to_device(args, dev))

    def _draw_ops(self, batch_size: int, height: int, width: int, generator: Optional[torch.Generator]) -> _OpPlan:
        """Draw the batch's ops and turn them into group keys, arguments and warp matrices (CPU tensors): every
        slot at once through the per-op tables made in __init__, then one `affine_matrix` call per warp op drawn.
        numpy, like the draw itself (policy.py says why)."""
        parts = []  # (op, arg, apply, bicubic) per slot group, numpy (B, slots)
        if self.policy is not None:
            draw = self.policy.sample(batch_size, generator)
            parts.append((draw.op.numpy(), draw.arg.numpy(), draw.apply.numpy(), draw.bicubic.numpy()))
        if self.cfg.color_jitter:
            parts.append(self._draw_jitter(batch_size, generator))
        op, arg, apply, bicubic = (np.concatenate(a, axis=1) for a in zip(*parts))
        identity = (arg >= self._identity_lo[op]) & (arg <= self._identity_hi[op])
        live = apply & ~identity
        warp = self._op_warp[op]
        key = np.where(live, self._op_key[op] + (warp & bicubic), -1)
        mats = np.zeros(op.shape + (2, 3))
        warped = live & warp
        for i in np.unique(op[warped]).tolist():
            sel = warped & (op == i)
            mats[sel] = affine_matrix(self.op_names[i], torch.from_numpy(arg[sel]), height, width).numpy()
        return _OpPlan(key=torch.from_numpy(key), arg=torch.from_numpy(arg), mats=torch.from_numpy(mats))

    def _draw_jitter(self, batch_size: int, generator: Optional[torch.Generator]):
        """torchvision's ColorJitter(x, x, x) per image: the three factors U(max(0, 1 - x), 1 + x) and a uniformly
        random order of the three ops (torchvision: `randperm` over them and hue, which is off). Three slots."""
        n_jitter, first = len(JITTER_OPS), len(self.op_names) - len(JITTER_OPS)
        x = self.cfg.color_jitter
        u = torch.rand((batch_size, 2, n_jitter), generator=generator, dtype=torch.float64).numpy()
        factor = max(0.0, 1.0 - x) + (1.0 + x - max(0.0, 1.0 - x)) * u[:, 0]
        order = np.argsort(u[:, 1], axis=1)  # a uniform random permutation per image
        arg = np.take_along_axis(factor, order, axis=1)
        ones = np.ones(order.shape, bool)
        return first + order, arg, ones, ~ones

    def _normalize(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """out = (x / 255 - mean) / std, computed on (N*H, W*C) views of the channels_last memory.

        On that view the per-channel constants are one contiguous row (tiled W times), which vectorizes;
        a (1, C, 1, 1) broadcast over channels_last memory would run an inner loop of length C.
        """
        n, c, h, w = out.shape
        key = (out.device, c, w)
        if key not in self._tiled:
            self._tiled[key] = (self._scale.repeat(w).view(1, w * c).to(out.device),
                                (-self._shift).repeat(w).view(1, w * c).to(out.device))
        scale, neg_shift = self._tiled[key]
        flat = out.permute(0, 2, 3, 1).reshape(n * h, w * c)  # a view: `out` is channels_last
        out.copy_(x)
        torch.addcmul(neg_shift, flat, scale, out=flat)

    def _noise_generator(self, device: torch.device, generator: Optional[torch.Generator]):
        """The CPU generator itself on CPU; elsewhere a device generator re-seeded from it (deterministic)."""
        if device.type == 'cpu':
            return generator
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        if device not in self._noise_generators:
            self._noise_generators[device] = torch.Generator(device=device)
        return self._noise_generators[device].manual_seed(seed)

    def _check(self, images: torch.Tensor, generator: Optional[torch.Generator]) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = (f'{images.dtype} tensor of shape {tuple(images.shape)}' if isinstance(images, torch.Tensor)
                   else type(images).__name__)
            raise ValueError(f'DeviceAugment expects a uint8 (B, C, H, W) batch, got {got}')
        if images.shape[1] != len(self.cfg.mean):
            raise ValueError(f'DeviceAugment: the batch has {images.shape[1]} channels but AugmentConfig.mean has '
                             f'{len(self.cfg.mean)} values')
        if self.op_names and images.shape[1] != 3:
            raise ValueError(f'--aa and --color-jitter need RGB images (3 channels), got {images.shape[1]}')
        if generator is not None and generator.device.type != 'cpu':
            raise ValueError(f'DeviceAugment draws its choices on the CPU: pass a CPU torch.Generator, '
                             f'got one on {generator.device}')
