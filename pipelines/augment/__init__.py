"""On-device augmentation: timm's --aa policies, random erasing and normalization, batched and per sample.

`DeviceAugment(AugmentConfig(...))(uint8_batch, cpu_generator)` -> float32 normalized channels_last batch.
"""
from .config import AugmentConfig
from .device_augment import DeviceAugment

__all__ = ['AugmentConfig', 'DeviceAugment']
