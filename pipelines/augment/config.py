"""AugmentConfig: the on-device train/eval augmentation settings, with timm's flag names and defaults."""
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .policy import parse_aa

__all__ = ['AugmentConfig']


@dataclass(frozen=True)
class AugmentConfig:
    """What `DeviceAugment` does to a uint8 batch; the fields mirror timm's train.py flags.

    Val/eval is `AugmentConfig(aa=None, reprob=0.0, hflip=0.0, mean=..., std=...)`: normalize only.
    """

    aa: Optional[str] = None
    """timm `--aa` string (`v0`, `v0r`, `original`, `originalr`, `3a`, `rand-m9-mstd0.5-inc1`, ...); None: no aa."""
    reprob: float = 0.0
    """timm `--reprob`: probability that an image gets random erasing (after normalization)."""
    remode: Literal['pixel', 'rand', 'const'] = 'pixel'
    """timm `--remode`: erase with per-pixel N(0,1) noise, one N(0,1) color per box, or 0 (the normalized mean)."""
    recount: int = 1
    """timm `--recount`: each erased image gets between 1 and `recount` boxes."""
    mean: Tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    """Per-channel mean in 0..1 (the model's `pretrained_cfg['mean']`); also gives the fill of geometric ops."""
    std: Tuple[float, ...] = IMAGENET_DEFAULT_STD
    """Per-channel std in 0..1 (the model's `pretrained_cfg['std']`)."""
    hflip: float = 0.5
    """timm `--hflip`: probability of a horizontal flip (done here, before auto-augment, as timm orders it)."""
    img_size: int = 224
    """Train image size; timm derives `translate_const = int(0.45 * img_size)` from it for TranslateX/Y."""
    interpolation: Literal['bicubic', 'bilinear', 'random'] = 'bicubic'
    """timm `--train-interpolation` as seen by the geometric aa ops; 'random' picks one per op and image."""
    color_jitter: float = 0.0
    """timm `--color-jitter`: after the aa, torchvision's ColorJitter(x, x, x): brightness, contrast and saturation
    (PIL's ImageEnhance) at factors U(max(0, 1 - x), 1 + x), in random order. timm applies it without `aa` or with
    DeiT III's `3a` only (elsewhere it is an error here, not silently dropped)."""

    def __post_init__(self):
        if not 0.0 <= self.reprob <= 1.0:
            raise ValueError(f'--reprob must be in [0, 1], got {self.reprob}')
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f'--hflip must be in [0, 1], got {self.hflip}')
        if self.remode not in ('pixel', 'rand', 'const'):
            raise ValueError(f"--remode must be one of 'pixel', 'rand', 'const', got {self.remode!r}")
        if self.recount < 1:
            raise ValueError(f'--recount must be >= 1, got {self.recount}')
        if len(self.mean) != len(self.std):
            raise ValueError(f'mean {self.mean} and std {self.std} must have one value per channel each')
        if any(s <= 0 for s in self.std):
            raise ValueError(f'std must be positive, got {self.std}')
        if self.color_jitter < 0:
            raise ValueError(f'--color-jitter must be >= 0, got {self.color_jitter}')
        if self.color_jitter > 0 and self.aa and '3a' not in self.aa:
            raise ValueError(f'--color-jitter does nothing with --aa {self.aa}: timm keeps color jitter only without '
                             f'--aa or with 3a; drop one of the two')
        if self.interpolation not in ('bicubic', 'bilinear', 'random'):
            raise ValueError(
                f"--train-interpolation must be 'bicubic', 'bilinear' or 'random', got {self.interpolation!r}")
        if self.img_size < 1:
            raise ValueError(f'img_size must be >= 1, got {self.img_size}')
        if self.aa:
            parse_aa(self.aa, self.aa_hparams)  # a bad --aa string is a ValueError here, before any loader exists

    @property
    def aa_hparams(self) -> dict:
        """timm's auto-augment hparams, as its `create_transform` derives them from the image size and mean."""
        return dict(translate_const=int(self.img_size * 0.45), img_mean=self.fill)

    @property
    def fill(self) -> Tuple[int, ...]:
        """Fill color of geometric ops, 0..255: timm's `img_mean` hparam as `create_transform` computes it."""
        return tuple(min(255, round(255 * m)) for m in self.mean)
