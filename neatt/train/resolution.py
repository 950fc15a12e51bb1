"""Progressive resizing: the side length each train epoch reads, by ffcv-imagenet's rule.

`--min-res` up to epoch `--start-ramp`, `--max-res` (default `--img-size`) from epoch `--end-ramp` on, and in
between the linear interpolation rounded to the nearest multiple of `--res-step` (numpy's round, halves to even,
as ffcv-imagenet rounds; it uses a step of 32). Eval always runs at `--img-size`.
"""
import numpy as np

from .config import DataConfig

__all__ = ['train_resolution', 'train_resolutions']


def train_resolution(data: DataConfig, img_size: int, epoch: int) -> int:
    """The train side length of `epoch` (0-based) for the data section's schedule; `img_size` without one."""
    last = data.max_res or img_size
    if not data.min_res:
        return last
    if epoch <= data.start_ramp:
        return data.min_res
    if epoch >= data.end_ramp:
        return last
    interp = np.interp(epoch, [data.start_ramp, data.end_ramp], [data.min_res, last])
    return int(np.round(interp / data.res_step)) * data.res_step


def train_resolutions(data: DataConfig, img_size: int, num_epochs: int) -> dict[int, list[int]]:
    """Resolution -> the epochs of `range(num_epochs)` that train at it, in epoch order."""
    epochs: dict[int, list[int]] = {}
    for epoch in range(num_epochs):
        epochs.setdefault(train_resolution(data, img_size, epoch), []).append(epoch)
    return epochs
