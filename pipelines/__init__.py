"""Data loading for neatt: one loader interface (``build_loader``) over the ffcv, dali and torch backends.

Backends import FFCV/DALI only when built; ``pipelines.augment`` holds the on-device augmentation.
"""
from .base import BACKENDS, Loader, LoaderError, build_loader

__all__ = ["BACKENDS", "Loader", "LoaderError", "build_loader"]
