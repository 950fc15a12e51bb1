"""What the trainer measures and where it goes: top-k counts, eval sums across ranks, throughput and data-stall
share, and loggers (JSON lines, TensorBoard) that only rank 0 writes.

Eval accumulates *sums* (loss x n, correct top-1/top-5, n) and all-reduces them, so uneven val shards across
ranks still give the exact dataset-wide mean. Data stall is the share of step wall time spent waiting in
`next(loader)`.
"""
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from neatt.fileio import write_json_atomic

from .distributed import all_reduce_sum

__all__ = ['topk_correct', 'EvalAccumulator', 'evaluate', 'ThroughputMeter', 'JsonlLogger', 'TensorBoardLogger',
           'MetricLoggers', 'write_json_atomic']


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k (clamped to the class count)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(target.view(-1, 1))
    return torch.stack([hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks])


class EvalAccumulator:
    """Sums of loss, top-1, top-5 and count on the device; `compute()` all-reduces them across ranks."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, top1, top5, n

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss_sum: torch.Tensor) -> None:
        correct = topk_correct(logits, target)
        count = self.sums.new_full((), float(target.numel()))  # a fill: a host tensor's copy would sync a GPU
        self.sums += torch.stack([loss_sum.double(), correct[0].double(), correct[1].double(), count])

    def compute(self) -> dict:
        sums = all_reduce_sum(self.sums.clone())
        loss, top1, top5, n = sums.tolist()
        if n == 0:
            raise RuntimeError('evaluation saw no samples: the val split is empty')
        return {'loss': loss / n, 'top1': 100.0 * top1 / n, 'top5': 100.0 * top5 / n, 'count': int(n)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp: bool, amp_dtype: torch.dtype,
             flip_tta: bool = False) -> dict:
    """Top-1, top-5 and mean cross-entropy of `model` over one pass of `loader` (epoch 0), summed across ranks.
    `flip_tta`: of the mean of the logits of each image and of its mirror image (ffcv-imagenet's lr_tta). The model
    is put in eval mode and given back in the mode it came in."""
    was_training = model.training
    model.eval()
    acc = EvalAccumulator(device)
    loader.set_epoch(0)
    for images, labels in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            logits = model(images)
            if flip_tta:
                logits = (logits.float() + model(images.flip(3)).float()) / 2
        acc.update(logits, labels, F.cross_entropy(logits.float(), labels, reduction='sum'))
    model.train(was_training)
    return acc.compute()


class ThroughputMeter:
    """Images/s and data-stall share over the steps since the last `reset()` (and over the whole run)."""

    def __init__(self):
        self.total_images = 0
        self.total_time = 0.0
        self.total_wait = 0.0
        self.reset()

    def reset(self) -> None:
        self.images = 0
        self.time = 0.0
        self.wait = 0.0

    def update(self, images: int, step_time: float, wait_time: float) -> None:
        self.images += images
        self.time += step_time
        self.wait += wait_time
        self.total_images += images
        self.total_time += step_time
        self.total_wait += wait_time

    @staticmethod
    def _rates(images, elapsed, wait) -> tuple[float, float]:
        return (images / elapsed if elapsed > 0 else 0.0), (wait / elapsed if elapsed > 0 else 0.0)

    def window(self) -> tuple[float, float]:
        """(images/s, data-stall share in [0, 1]) since the last reset."""
        return self._rates(self.images, self.time, self.wait)

    def overall(self) -> tuple[float, float]:
        return self._rates(self.total_images, self.total_time, self.total_wait)




class JsonlLogger:
    """Appends one JSON object per line to `<run>/metrics.jsonl` (flushed, so a crash loses nothing logged)."""

    def __init__(self, path: os.PathLike, truncate: bool):
        self.f = open(path, 'w' if truncate else 'a', buffering=1)

    def log(self, kind: str, step: int, values: dict) -> None:
        self.f.write(json.dumps({'kind': kind, 'step': step, 'time': time.time(), **values}) + '\n')

    def close(self) -> None:
        self.f.close()


class TensorBoardLogger:
    """Scalars under `<kind>/<name>` in `<run>/tb`."""

    def __init__(self, log_dir: os.PathLike):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, kind: str, step: int, values: dict) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f'{kind}/{name}', value, step)

    def close(self) -> None:
        self.writer.close()


class MetricLoggers:
    """All loggers behind one `log()`; empty (a no-op) on ranks other than 0."""

    def __init__(self, run_dir: Optional[os.PathLike], enabled: bool, fresh: bool):
        self.loggers = []
        if enabled and run_dir is not None:
            self.loggers = [JsonlLogger(Path(run_dir) / 'metrics.jsonl', truncate=fresh),
                            TensorBoardLogger(Path(run_dir) / 'tb')]

    def log(self, kind: str, step: int, values: dict) -> None:
        for logger in self.loggers:
            logger.log(kind, step, values)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []
