"""Shared helpers for the model tests: real images at tiny sizes and tiny model configs."""
import functools

import numpy as np
import torch
import torch.nn.functional as F

# 32 px input, 8 px patches -> 16 patches + CLS = 17 tokens; 3 blocks so that block 3 sees a chained z
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=5)


@functools.lru_cache(maxsize=None)
def _sample_photos() -> np.ndarray:
    from sklearn.datasets import load_sample_images
    return np.stack(load_sample_images().images)  # (2, 427, 640, 3) uint8: china.jpg, flower.jpg


def real_images(n: int = 2, size: int = 32) -> torch.Tensor:
    """`n` crops of scikit-learn's sample photos, resized to `size` px, normalized to mean 0.5 / std 0.5."""
    photos = torch.from_numpy(_sample_photos()).permute(0, 3, 1, 2).float() / 255.
    crops = []
    for i in range(n):
        top, left = 40 * i % 200, 70 * i % 300
        crop = photos[i % 2:i % 2 + 1, :, top:top + 220, left:left + 220]
        crops.append(F.interpolate(crop, size=(size, size), mode='bilinear', antialias=True, align_corners=False))
    return (torch.cat(crops) - 0.5) / 0.5


def randomize_head_mix(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the head-mixing MLPs non-trivial weights, so that a test sees them act (their init is small)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if '.head_mix.' in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
