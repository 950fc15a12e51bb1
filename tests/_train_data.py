"""Test data and helpers for the trainer tests (owned by the trainer; other areas have their own helper files).

`DigitsLoader` is an in-memory implementation of the pipelines Loader interface (docs/architecture.md section 2)
over scikit-learn's 8x8 digits upscaled to 32 px. Unit tests of the Trainer use it so that they test the trainer
alone; the end-to-end tests use the real backends through `pipelines.build_loader`.
"""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from neatt.train.config import PRESETS, apply_overrides

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# A Ne-Att small enough for CPU unit tests: 2 blocks of width 48 at 32 px.
TINY_MODEL = dict(model='neatt_vit_tiny_patch4_32', num_classes=10, img_size=32,
                  model_kwargs={'depth': 2, 'embed_dim': 48, 'num_heads': 3})


def digits_tensors(n: int = 256, size: int = 32):
    """(images float32 N x 3 x size x size in [-1, 1], labels int64) from sklearn's digits."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False).repeat(1, 3, 1, 1)
    return (x * 2 - 1).contiguous(memory_format=torch.channels_last), torch.tensor(d.target[:n], dtype=torch.long)


class DigitsLoader:
    """Loader interface over tensors: (seed, epoch) permutation, disjoint rank slices, exact mid-epoch resume."""

    def __init__(self, images, labels, batch_size, rank=0, world_size=1, seed=0, shuffle=True, drop_last=True):
        self.images, self.labels = images, labels
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.batches_done = 0, 0

    def _indices(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch)) \
            if self.shuffle else torch.arange(n)
        return order[self.rank::self.world_size]

    def __len__(self):
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        self.epoch, self.batches_done = epoch, 0

    def __iter__(self):
        idx = self._indices()
        for b in range(self.batches_done, len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            self.batches_done = b + 1
            yield self.images[sel], self.labels[sel]

    def state_dict(self):
        return {'epoch': self.epoch, 'batches_done': self.batches_done}

    def load_state_dict(self, sd):
        self.epoch, self.batches_done = sd['epoch'], sd['batches_done']


class ResizingDigitsLoader(DigitsLoader):
    """DigitsLoader with the train loaders' `set_image_size` (progressive resizing): batches resized to it."""
    image_size = 32

    def set_image_size(self, size):
        self.image_size = size

    def __iter__(self):
        for x, y in super().__iter__():
            if x.shape[-1] != self.image_size:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode='bilinear', antialias=True)
            yield x.contiguous(memory_format=torch.channels_last), y


def tiny_config(tmp_path, **overrides):
    """The demo preset shrunk for unit tests: tiny model, torch backend, output under tmp_path."""
    cfg = PRESETS['demo']()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{
        k: v for k, v in TINY_MODEL.items()}))
    base = dict(data_dir=str(tmp_path / 'unused'), output=str(tmp_path / 'runs'), experiment='t', batch_size=16,
                epochs=2, warmup_epochs=0, log_interval=2, workers=0)
    return apply_overrides(cfg, {**base, **overrides})


def convert_digits(out: Path) -> Path:
    """The embedded digits dataset converted by tools/convert_datasets.py under `out`; returns its directory."""
    r = subprocess.run([PYTHON, str(REPO / 'tools' / 'convert_datasets.py'), 'digits', '--out', str(out),
                        '--no-progress'], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return out / 'digits'


def run_cli(*args, timeout=300, env_extra=None):
    """Run train_fast.py in a subprocess; returns CompletedProcess with text stdout/stderr."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **(env_extra or {}))
    return subprocess.run([PYTHON, str(REPO / 'train_fast.py'), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
