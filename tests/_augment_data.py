"""Real photos for the augmentation tests: scikit-learn's and scikit-image's sample images, resized small."""
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

# Non-square on purpose: a height/width mix-up in the warps shows.
HEIGHT, WIDTH = 40, 56


@lru_cache(maxsize=None)
def photos(height: int = HEIGHT, width: int = WIDTH) -> tuple:
    """Six distinct RGB photos as PIL images (china, flower, astronaut, coffee, chelsea, rocket)."""
    from sklearn.datasets import load_sample_images
    from skimage import data as skdata
    arrays = list(load_sample_images().images) + [skdata.astronaut(), skdata.coffee(), skdata.chelsea(),
                                                  skdata.rocket()]
    return tuple(Image.fromarray(a).resize((width, height), Image.BICUBIC) for a in arrays)


def to_batch(images) -> torch.Tensor:
    """PIL RGB images -> uint8 (N, 3, H, W) in channels_last memory (NHWC, as the loaders give)."""
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)


def to_arrays(batch: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, H, W, 3) numpy, to compare with PIL results."""
    return batch.permute(0, 2, 3, 1).cpu().numpy()
