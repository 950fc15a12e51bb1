#!/usr/bin/env python
"""Gaussian blur of one 224 px photo: Pillow's ImageFilter.GaussianBlur against the CPU kernel's `_gaussian_blur`
(radius 1.05, the middle of 3a's U(0.1, 2) draw), and one of the kernel's box passes alone; ms per call, mean of
50 after one warm-up call. Run from the repository root: python docs/results/2026-11-27-3a/blur_time.py
"""
import os
import sys
import time

import numpy as np
from PIL import ImageFilter

sys.path.insert(0, os.getcwd())
from pipelines.augment import cpu_kernels  # noqa: E402
from tests._augment_data import photos  # noqa: E402

RADIUS = 1.05


def main():
    image = photos(224, 224)[0]
    pixels = np.asarray(image).copy()
    out = np.empty_like(pixels)
    _, r, ww, fw = cpu_kernels._box_blur_weights(RADIUS)
    cases = [("Pillow GaussianBlur", lambda: image.filter(ImageFilter.GaussianBlur(RADIUS))),
             ("kernel _gaussian_blur", lambda: cpu_kernels._gaussian_blur(pixels, out, RADIUS)),
             ("kernel one box pass", lambda: cpu_kernels._box_pass_y(pixels, out, r, ww, fw))]
    for name, fn in cases:
        fn()
        t0 = time.perf_counter()
        for _ in range(50):
            fn()
        print(f"{name:<24}{(time.perf_counter() - t0) / 50 * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
