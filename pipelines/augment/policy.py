"""timm `--aa` policies as tensors: per-sample op, apply flag and argument drawn for a whole batch at once.

timm parses the string and builds its own policy objects (`auto_augment_transform`, `rand_augment_transform`);
we read the ops, probabilities, magnitudes and magnitude noise back from those objects, so that every option
timm accepts (and every error it raises) is the same here. What timm does per image in Python with `random`,
`BatchPolicy.sample` does for the batch with numbers drawn from one `torch.Generator`.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from timm.data.auto_augment import (
    _LEVEL_DENOM, AutoAugment, auto_augment_transform, rand_augment_transform,
)

__all__ = ['BatchPolicy', 'OpDraw', 'LEVEL_TO_ARG_BATCHED', 'parse_aa']


# Batched twins of timm's LEVEL_TO_ARG functions: (level, sign) -> op argument, float64 numpy arrays like timm's
# Python floats.
# `sign` is -1 where timm's `_randomly_negate` would negate. Ops without an argument are absent (timm: None).
# tests/test_augment_policy.py checks each one against timm's own function over a grid of levels and both signs.
def _scaled(scale: float, negate: bool) -> Callable:
    def fn(level, sign, hparams):
        arg = level / _LEVEL_DENOM * scale
        return arg * sign if negate else arg
    return fn


def _enhance(level, sign, hparams):
    return level / _LEVEL_DENOM * 1.8 + 0.1


def _enhance_increasing(level, sign, hparams):
    return np.maximum(1.0 + level / _LEVEL_DENOM * 0.9 * sign, 0.1)


def _translate_abs(level, sign, hparams):
    return level / _LEVEL_DENOM * float(hparams['translate_const']) * sign


def _translate_rel(level, sign, hparams):
    return level / _LEVEL_DENOM * hparams.get('translate_pct', 0.45) * sign


def _posterize(level, sign, hparams):
    return np.floor(level / _LEVEL_DENOM * 4)


def _solarize(level, sign, hparams):
    return np.minimum(np.floor(level / _LEVEL_DENOM * 256), 256)


def _minmax(lo: float, hi: float) -> Callable:
    def fn(level, sign, hparams):
        return np.clip(lo + (hi - lo) * (level / _LEVEL_DENOM), lo, hi)
    return fn


LEVEL_TO_ARG_BATCHED: Dict[str, Callable] = {
    'Rotate': _scaled(30.0, negate=True),
    'Posterize': _posterize,
    'PosterizeIncreasing': lambda level, sign, hp: 4 - _posterize(level, sign, hp),
    'PosterizeOriginal': lambda level, sign, hp: _posterize(level, sign, hp) + 4,
    'Solarize': _solarize,
    'SolarizeIncreasing': lambda level, sign, hp: 256 - _solarize(level, sign, hp),
    'SolarizeAdd': lambda level, sign, hp: np.minimum(np.floor(level / _LEVEL_DENOM * 110), 128),
    'Color': _enhance,
    'Contrast': _enhance,
    'Brightness': _enhance,
    'Sharpness': _enhance,
    'ColorIncreasing': _enhance_increasing,
    'ContrastIncreasing': _enhance_increasing,
    'BrightnessIncreasing': _enhance_increasing,
    'SharpnessIncreasing': _enhance_increasing,
    'ShearX': _scaled(0.3, negate=True),
    'ShearY': _scaled(0.3, negate=True),
    'TranslateX': _translate_abs,
    'TranslateY': _translate_abs,
    'TranslateXRel': _translate_rel,
    'TranslateYRel': _translate_rel,
    # DeiT III's 3-Augment (`--aa 3a`, and RandAugment's `t3a` choices)
    'Desaturate': _minmax(0.5, 1.0),
    'GaussianBlur': _minmax(0.1, 2.0),
    'GaussianBlurRand': _minmax(0.0, 1.0),  # the radius bound's factor; `sample` draws the radius itself
}

NO_ARG_OPS = ('AutoContrast', 'Equalize', 'Invert')
BLUR_RADIUS_MIN, BLUR_RADIUS_MAX = 0.1, 2.0  # timm's gaussian_blur_rand: random.uniform(0.1, 2.0 * factor)
SUPPORTED_OPS = frozenset(LEVEL_TO_ARG_BATCHED) | frozenset(NO_ARG_OPS)


@dataclass
class OpDraw:
    """What each image of a batch gets in each of the policy's L slots (tensors of shape (B, L))."""

    op: torch.Tensor
    """index into `BatchPolicy.op_names`"""
    apply: torch.Tensor
    """bool: the op's probability test passed"""
    arg: torch.Tensor
    """float64 argument of the op (degrees, factor, bits, threshold, pixels...), as timm's level function gives;
    for GaussianBlurRand the blur radius that timm's op draws from it"""
    bicubic: torch.Tensor
    """bool: geometric ops resample bicubic (else bilinear)"""


class BatchPolicy:
    """A timm AutoAugment/RandAugment policy, sampled for a whole batch at once.

    Parameters
    ----------
    aa : str
        timm `--aa` string.
    hparams : dict
        timm's aa hparams (`translate_const`, `img_mean`, optional `interpolation`), as `create_transform` builds.
    random_interpolation : bool
        Geometric ops pick bilinear or bicubic per image and op with probability 1/2 (timm's default
        `_RANDOM_INTERPOLATION` when `--train-interpolation random`); else `bicubic_default` decides.
    """

    def __init__(self, aa: str, hparams: dict, random_interpolation: bool = False, bicubic_default: bool = True):
        self.aa = aa
        self.hparams = dict(hparams)
        self.random_interpolation = random_interpolation
        self.bicubic_default = bicubic_default
        timm_aa = parse_aa(aa, hparams)
        if isinstance(timm_aa, AutoAugment):
            slots = [list(sub_policy) for sub_policy in timm_aa.policy]
            self.kind = 'auto'
            self.num_layers = max(len(s) for s in slots)
            all_ops = [op for s in slots for op in s]
        else:
            self.kind = 'rand'
            self.num_layers = timm_aa.num_layers
            all_ops = list(timm_aa.ops)
        unsupported = sorted({op.name for op in all_ops} - SUPPORTED_OPS)
        if unsupported:
            raise ValueError(
                f'--aa {aa!r} uses {", ".join(unsupported)}, which the on-device augmentation does not implement; '
                f'use an AutoAugment (v0, v0r, original, originalr) or RandAugment (rand-m9-mstd0.5-inc1) policy')
        self.op_names: List[str] = sorted({op.name for op in all_ops})
        # timm gives every op of one policy the same hparams, hence the same magnitude noise and bound
        self.magnitude_std = float(all_ops[0].magnitude_std)
        self.magnitude_max = float(all_ops[0].magnitude_max or _LEVEL_DENOM)
        index = {n: i for i, n in enumerate(self.op_names)}
        if self.kind == 'auto':
            # (S, L) tables; a sub-policy shorter than L is padded with an op of probability -1 (never applied)
            pad = lambda s, f, v: [f(op) for op in s] + [v] * (self.num_layers - len(s))
            self.table_op = np.array([pad(s, lambda o: index[o.name], 0) for s in slots], np.int64)
            self.table_prob = np.array([pad(s, lambda o: float(o.prob), -1.0) for s in slots], np.float64)
            self.table_mag = np.array([pad(s, lambda o: float(o.magnitude), 0.0) for s in slots], np.float64)
        else:
            self.choice_op = np.array([index[op.name] for op in all_ops], np.int64)
            self.choice_prob = np.array([float(op.prob) for op in all_ops], np.float64)
            self.choice_mag = np.array([float(op.magnitude) for op in all_ops], np.float64)
            cw = timm_aa.choice_weights
            self.choice_weights = None if cw is None else torch.as_tensor(cw, dtype=torch.float64)

    def sample(self, batch_size: int, generator: Optional[torch.Generator]) -> OpDraw:
        """Draw every image's ops (CPU tensors); the draws have fixed shapes and order, so a seeded generator
        repeats them. The random numbers come from `generator` (torch's: a loader seeds one per batch); the rest
        is numpy, because a batch's draw is a few hundred values and torch's per-call overhead (a few µs, numpy's
        is under one) would cost more than the arithmetic."""
        B, L = batch_size, self.num_layers
        rand = lambda *shape: torch.rand(shape, generator=generator, dtype=torch.float64).numpy()
        if self.kind == 'auto':
            # timm: random.choice(policy), then each op of the sub-policy in turn
            sub = np.floor(rand(B) * len(self.table_op)).astype(np.int64)
            op, prob, mag = self.table_op[sub], self.table_prob[sub], self.table_mag[sub]
        else:
            n_choices = len(self.choice_op)
            if self.choice_weights is None:
                # timm: np.random.choice(ops, num_layers, replace=True)
                pick = np.floor(rand(B, L) * n_choices).astype(np.int64)
            else:
                # timm: np.random.choice(ops, num_layers, replace=False, p=weights); Gumbel-top-k on the log
                # weights is the same distribution as that sequential weighted sampling without replacement
                u = torch.from_numpy(rand(B, n_choices))
                keys = torch.log(self.choice_weights)[None] - torch.log(-torch.log(u.clamp_min(1e-300)))
                pick = keys.topk(L, dim=1).indices.numpy()
            op, prob, mag = self.choice_op[pick], self.choice_prob[pick], self.choice_mag[pick]
        # timm: `if prob < 1.0 and random.random() > prob: skip`
        apply = rand(B, L) <= prob
        if self.magnitude_std == math.inf:
            mag = rand(B, L) * mag  # timm: random.uniform(0, magnitude)
        elif self.magnitude_std > 0:  # timm: random.gauss
            mag = mag + self.magnitude_std * torch.randn((B, L), generator=generator, dtype=torch.float64).numpy()
        mag = np.clip(mag, 0.0, self.magnitude_max)
        # timm's _randomly_negate: `-v if random.random() > 0.5 else v`
        sign = np.where(rand(B, L) > 0.5, -1.0, 1.0)
        bicubic = rand(B, L) < 0.5 if self.random_interpolation else np.full((B, L), self.bicubic_default)
        arg = np.zeros_like(mag)
        for i, name in enumerate(self.op_names):
            fn = LEVEL_TO_ARG_BATCHED.get(name)
            sel = op == i
            if fn is not None and sel.any():
                arg[sel] = fn(mag[sel], sign[sel], self.hparams)
        if 'GaussianBlurRand' in self.op_names:
            # timm draws the blur radius inside the op; here it is drawn with the rest, and arg is the radius
            sel = op == self.op_names.index('GaussianBlurRand')
            u = rand(B, L)
            arg[sel] = BLUR_RADIUS_MIN + (BLUR_RADIUS_MAX * arg[sel] - BLUR_RADIUS_MIN) * u[sel]
        return OpDraw(op=torch.from_numpy(op), apply=torch.from_numpy(apply), arg=torch.from_numpy(arg),
                      bicubic=torch.from_numpy(bicubic))


def parse_aa(aa: str, hparams: dict):
    """timm's own policy object for `aa` (dispatch as in timm's `create_transform`); bad strings -> ValueError."""
    if aa.startswith('augmix'):
        raise ValueError(f'--aa {aa!r}: AugMix mixes whole augmentation chains and is not supported on device; '
                         f'use v0, original, 3a or a rand-... RandAugment string')
    try:
        if aa.startswith('rand'):
            return rand_augment_transform(aa, dict(hparams))
        return auto_augment_transform(aa, dict(hparams))
    except (AssertionError, ValueError, KeyError) as e:
        raise ValueError(
            f'--aa {aa!r} is not a timm auto-augment string ({e or type(e).__name__}); examples: v0, v0r, original, '
            f'originalr, 3a, rand-m9-mstd0.5-inc1, rand-m9-n2-mstd0.5') from None
