"""torchvision backend: the baseline and the reference the fast backends are checked against.

A plain ``torch.utils.data.DataLoader`` whose sampler is this rank's slice of the epoch order
(``pipelines.sharding``, DistributedSampler semantics), decoding with PIL and transforming with torchvision:
train ``resized_crop`` (bicubic, or bilinear per ``pipelines.crop.bilinear_flags``) with the window from
``pipelines.crop.rrc_windows``, val timm's eval transform
``Resize(floor(image_size / crop_pct), bicubic)`` + ``CenterCrop(image_size)``. It reads the JPEG bytes of the
DALI webdataset shards through their index (``pipelines.shard_reader``), so it works for every converted dataset.
"""
import io
import math
from typing import Iterator, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from .base import Loader
from .crop import bilinear_flags, flip_flags, rrc_windows
from .shard_reader import ShardReader

__all__ = ["TorchLoader"]


class _JpegDataset(Dataset):
    """Item ``(index, crop key, epoch, train size)`` -> (uint8 HWC crop, label); the crop key and epoch fix the
    crop and its resize filter, the train size its side length (the items carry it: the persistent workers hold
    copies of this object)."""

    def __init__(self, reader: ShardReader, image_size: int, train: bool, crop_pct: float, seed: int,
                 scale: Tuple[float, float], ratio: Tuple[float, float], hflip: float, interpolation: str):
        self.reader = reader
        self.train = train
        self.seed = seed
        self.scale, self.ratio, self.hflip, self.interpolation = scale, ratio, hflip, interpolation
        self.eval_transform = transforms.Compose([
            transforms.Resize(math.floor(image_size / crop_pct), interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
        ])

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: Tuple[int, int, int, int]):
        index, key, epoch, train_size = item
        img = Image.open(io.BytesIO(self.reader.jpeg(index))).convert("RGB")
        if self.train:
            top, left, h, w = (int(v) for v in rrc_windows([img.height], [img.width], [key], self.seed, epoch,
                                                                self.scale, self.ratio)[0])
            bilinear = bilinear_flags([key], self.seed, epoch, self.interpolation)[0]
            img = F.resized_crop(img, top, left, h, w, [train_size, train_size],
                                 interpolation=InterpolationMode.BILINEAR if bilinear else InterpolationMode.BICUBIC)
            if flip_flags([key], self.seed, epoch, self.hflip)[0]:
                img = F.hflip(img)
        else:
            img = self.eval_transform(img)
        return torch.from_numpy(np.array(img, dtype=np.uint8)), int(self.reader.labels[index])


class _PassKeys:
    """The DataLoader's sampler: the ``(index, crop key, epoch, train size)`` items of the pass being read, set
    before each pass."""

    def __init__(self):
        self.keys = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class TorchLoader(Loader):
    """PIL + torchvision decoding in DataLoader worker processes (``num_workers``; 0 decodes in-process).

    One DataLoader for the loader's life, its workers persistent across epochs as in timm's loader (forking new
    ones each epoch costs seconds on a big training process); so, as with the other backends, one pass is read
    at a time (``Loader.__iter__`` stops a stale one).
    """

    def __init__(self, data_dir: str, manifest: dict, **kwargs):
        super().__init__(data_dir, manifest, **kwargs)
        reader = ShardReader(data_dir, manifest["formats"]["dali"][self.split]["shards"])
        if len(reader) != self.num_samples:
            raise ValueError(f"{data_dir}: DALI shards of {self.split!r} hold {len(reader)} samples, manifest "
                             f"says {self.num_samples}; re-run tools/convert_datasets.py with --force")
        self.dataset = _JpegDataset(reader, self.image_size, self.train, self.crop_pct, self.seed, self.scale,
                                    self.ratio, self.hflip, self.interpolation)
        self._keys = _PassKeys()
        # The workers draw nothing random (crops come from the keys), but DataLoader still takes a base seed at
        # iter(): from its own generator here, so that reading data never moves torch's global RNG.
        self._worker_seeds = torch.Generator()
        self._loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self._keys,
                                  num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                                  drop_last=False, generator=self._worker_seeds,
                                  persistent_workers=self.num_workers > 0)

    def _iter_uint8(self, epoch: int, start_batch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self._keys.keys = [(int(i), int(k), epoch, self.image_size)
                           for i, k in zip(*self.order.remaining_with_keys(epoch, start_batch))]
        self._worker_seeds.manual_seed(self.seed + epoch)
        cuda = self.device.type == "cuda"
        for images, labels in self._loader:  # images (B, H, W, 3) contiguous: NCHW permute is channels-last
            yield (images.to(self.device, non_blocking=cuda).permute(0, 3, 1, 2),
                   labels.to(self.device, non_blocking=cuda))
