"""One loader interface for every backend: ``build_loader()`` and the ``Loader`` base class.

The trainer only sees ``Loader``: ``len()``, ``set_epoch()``, ``set_image_size()`` (train: progressive
resizing between epochs), iteration yielding normalized float32 NCHW
channels-last images and int64 labels on the device, and ``state_dict()``/``load_state_dict()`` for exact
mid-epoch resume. A backend only implements ``_iter_uint8(epoch, start_batch)``: uint8 NCHW batches of the
samples ``pipelines.sharding`` assigns to this rank, cropped, resized and (train) flipped deterministically
(``pipelines.crop``); this class applies ``pipelines.augment.DeviceAugment`` on the device, with a generator
seeded from (seed, epoch, rank, batch index), so a resumed run sees the same crops, flips and ops. The flip
(``augment.hflip``) is done by the backend while it writes the crop, as FFCV and DALI pipelines do, rather than
as a separate pass over the batch.
"""
import dataclasses
import importlib
import itertools
import os
import warnings
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

from .crop import DEFAULT_RATIO, DEFAULT_SCALE, hash_uniform
from .sharding import ShardedOrder

__all__ = ["LoaderError", "Loader", "build_loader", "BACKENDS"]

# backend name -> (module, class, manifest format it reads, pip package that provides it)
BACKENDS = {
    "ffcv": ("pipelines.ffcv_loader", "FfcvLoader", "ffcv", "ffcv"),
    "dali": ("pipelines.dali_loader", "DaliLoader", "dali", "nvidia-dali-cuda130"),
    "torch": ("pipelines.torch_loader", "TorchLoader", "dali", "torchvision"),
}


class LoaderError(ValueError):
    """A loader cannot be built from what the user gave; the message says what to do."""


class Loader:
    """Shared state and iteration of every backend (see the module docstring).

    Subclasses implement ``_iter_uint8(epoch, start_batch)`` yielding ``(uint8 NCHW images, int64 labels)``,
    both on ``self.device``, for batches ``start_batch, start_batch + 1, ...`` of ``self.order`` in ``epoch``.
    A loader has one position: iterating it again continues from there, and the pass before, if resumed,
    raises instead of reading.
    """

    def __init__(self, data_dir: str, manifest: dict, *, split: str, batch_size: int, image_size: int,
                 train: bool, rank: int, world_size: int, seed: int, device: torch.device, num_workers: int,
                 augment, crop_pct: float, drop_last: bool, scale: Tuple[float, float],
                 ratio: Tuple[float, float], hflip: float, repeats: int = 1, interpolation: str = "bicubic"):
        self.data_dir = data_dir
        self.manifest = manifest
        self.split = split
        self.batch_size = batch_size
        self.image_size = image_size
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.device = device
        self.num_workers = num_workers
        self.crop_pct = crop_pct
        self.scale, self.ratio = tuple(scale), tuple(ratio)  # random-resized-crop ranges (pipelines.crop)
        self.hflip = hflip if train else 0.0  # probability of pipelines.crop.flip_flags
        self.interpolation = interpolation if train else "bicubic"  # of the crops' resize (pipelines.crop)
        self.num_samples = int(manifest["splits"][split]["count"])
        self.repeats = repeats
        self.order = ShardedOrder(self.num_samples, rank=rank, world_size=world_size, batch_size=batch_size,
                                  seed=seed, shuffle=train, pad=train, drop_last=drop_last, repeats=repeats)
        self.augment = augment
        self.epoch = 0
        self.batches_done = 0
        self._generator = torch.Generator()  # DeviceAugment takes a CPU generator (it seeds device ones)
        self._passes = 0  # passes started (and position changes), so that a stale pass can tell

    def __len__(self) -> int:
        return self.order.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration reads; a new epoch starts at its first batch."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.batches_done = 0
            self._passes += 1  # a suspended pass of the old epoch must not move the new position

    def set_image_size(self, image_size: int) -> None:
        """Train: the side length of the batches from the next pass on (progressive resizing: ffcv-imagenet
        lowers it in the early epochs). Each sample keeps its crop window, resized to the new size, and the aa's
        translate range follows the size as timm derives it (``translate_const = int(0.45 * img_size)``)."""
        if not self.train:
            raise LoaderError("set_image_size: a val loader keeps the image size it was built with (its center "
                              "crops depend on it); build another val loader for another size")
        if int(image_size) < 1:
            raise LoaderError(f"image_size={image_size} must be >= 1")
        if image_size != self.image_size:
            _warn_if_upsampled(self.data_dir, self.manifest, image_size)
            self.image_size = int(image_size)
            self.augment = self.augment.for_img_size(self.image_size)
            self._passes += 1  # a suspended pass must not go on at the old size

    def state_dict(self) -> dict:
        """Position of the loader: the next iteration starts at batch ``batches_done`` of ``epoch``."""
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "world_size": self.world_size, "batch_size": self.batch_size, "num_samples": self.num_samples,
                "repeats": self.repeats, "image_size": self.image_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size", "batch_size", "num_samples", "repeats", "image_size"):
            if key in state and state[key] != getattr(self, key):
                raise LoaderError(f"loader state was saved with {key}={state[key]} but this loader has "
                                  f"{key}={getattr(self, key)}; resume with the same settings, or start "
                                  "the epoch afresh")
        self.order.remaining(state["epoch"], state["batches_done"])  # validates batches_done
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self._passes += 1  # as in set_epoch

    def batch_seed(self, epoch: int, batch_index: int) -> int:
        """Seed of the on-device augmentation of one batch: a function of (seed, epoch, rank, batch index)."""
        u = hash_uniform(self.seed, epoch, self.rank, np.int64(batch_index) + (1 << 40))
        return int(u[0] * (1 << 53))

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.batches_done >= len(self):  # a finished epoch read again starts over, like a DataLoader
            self.batches_done = 0
        epoch, start = self.epoch, self.batches_done
        self._passes += 1
        this_pass = self._passes
        batches = self._iter_uint8(epoch, start)
        for k in itertools.count(start):
            # checked before reading: a stale pass must not take a batch from the backend's newer pass
            if self._passes != this_pass:
                raise RuntimeError("a newer pass over this loader started, or set_epoch/load_state_dict moved "
                                   "it, while this pass was suspended; read one pass at a time (a loader has "
                                   "one position, like a DataLoader with persistent workers)")
            batch = next(batches, None)
            if batch is None:
                return
            self._generator.manual_seed(self.batch_seed(epoch, k))
            images = self.augment(batch[0], self._generator)
            self.batches_done = k + 1
            yield images, batch[1]

    def _iter_uint8(self, epoch: int, start_batch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


def _resolve_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoaderError(f"device={device} was requested but this machine has no usable CUDA GPU; "
                          "pass device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise LoaderError(f"device={device}: the loaders support 'cpu' and 'cuda[:N]'")
    return device


def _warn_if_upsampled(data_dir: str, manifest: dict, image_size: int) -> None:
    max_res = manifest.get("image_policy", {}).get("max_resolution")
    if max_res and image_size > max_res:
        warnings.warn(f"image_size={image_size} is larger than the stored max_resolution={max_res} of "
                      f"{data_dir}: every image is upsampled. If that is not intended (it is for CIFAR "
                      f"transfer), re-convert with a max resolution >= {image_size}.", stacklevel=3)


def _check_files(data_dir: str, entry: dict) -> None:
    """Every file of a format/split's manifest entry is there with its listed size: a dataset copied to a node
    in part (an rsync cut short) fails here with its name, not deep inside a decoder."""
    from neatt.datasets.manifest import file_problems
    problems = file_problems(data_dir, entry)
    if problems:
        raise LoaderError(f"{problems[0]}: an incomplete copy, or a file changed after conversion. Copy the "
                          f"dataset directory again or re-convert; `tools/convert_datasets.py ... --verify` "
                          f"checks every file")


def build_loader(data_dir: str, split: str = "train", backend: str = "ffcv", batch_size: int = 64,
                 image_size: int = 224, train: bool = True, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device: Union[str, torch.device] = "cpu", num_workers: int = 2, augment=None,
                 crop_pct: float = 0.875, drop_last: Optional[bool] = None,
                 scale: Tuple[float, float] = DEFAULT_SCALE, ratio: Tuple[float, float] = DEFAULT_RATIO,
                 aug_repeats: int = 0) -> Loader:
    """Build the loader of one split of a converted dataset (docs/architecture.md, section 2).

    Parameters
    ----------
    data_dir : str
        Dataset directory holding ``manifest.json`` (written by tools/convert_datasets.py).
    split : str
        ``"train"`` or ``"val"``.
    backend : str
        ``"ffcv"``, ``"dali"`` or ``"torch"``.
    batch_size : int
        Samples per batch on this rank.
    image_size : int
        Output side length.
    train : bool
        Train transform (random-resized-crop, flip, aa, erasing) or val (resize + center crop).
    rank, world_size : int
        This process's part of every epoch (``pipelines.sharding``).
    seed : int
        Seeds the epoch order, the crops and the on-device augmentation.
    device : str or torch.device
        Where batches are delivered; ``cuda`` uses the backend's GPU paths.
    num_workers : int
        Decoding processes/threads.
    augment : pipelines.augment.AugmentConfig, optional
        On-device augmentation and normalization; ``None`` uses ``AugmentConfig()``. Its ``hflip`` is applied
        by the backend as it writes each crop (``pipelines.crop.flip_flags``), and its ``interpolation`` (timm's
        ``--train-interpolation``: bicubic, bilinear or random per image) by the crops' resize as well as the aa.
        Val uses only its mean/std (and resizes bicubic, as timm's eval transform for ViTs); its ``img_size`` is
        set to ``image_size``.
    crop_pct : float
        Val: resize the shorter side to ``floor(image_size / crop_pct)``, then center-crop.
    drop_last : bool, optional
        Drop each rank's partial final batch; default ``train``.
    scale, ratio : (float, float)
        Train: random-resized-crop ranges of the window's area (a fraction of the image's) and aspect ratio,
        torchvision's defaults (timm's ``--scale``, ``--ratio``).
    aug_repeats : int
        Train: repeated augmentation (timm's ``--aug-repeats``, DeiT's recipe): each sample read this many times
        per epoch, each copy with its own crop, on different ranks while there are enough (``pipelines.sharding``);
        0 or 1: off.
    """
    from .augment import AugmentConfig, DeviceAugment
    from neatt.datasets.manifest import ManifestError, read_manifest

    if backend not in BACKENDS:
        raise LoaderError(f"backend={backend!r} is not one of {sorted(BACKENDS)}")
    if split not in ("train", "val"):
        raise LoaderError(f"split={split!r}: use 'train' or 'val'")
    if batch_size < 1 or image_size < 1 or num_workers < 0:
        raise LoaderError(f"batch_size={batch_size}, image_size={image_size} must be >= 1 and "
                          f"num_workers={num_workers} >= 0")
    if not 0 < crop_pct <= 1:
        raise LoaderError(f"crop_pct={crop_pct} must be in (0, 1]")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise LoaderError(f"scale={tuple(scale)} must be (min, max) with 0 < min <= max <= 1")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise LoaderError(f"ratio={tuple(ratio)} must be (min, max) with 0 < min <= max")
    if world_size < 1 or not 0 <= rank < world_size:
        raise LoaderError(f"rank={rank} world_size={world_size}: need 0 <= rank < world_size")
    repeats = max(1, aug_repeats) if train else 1
    if aug_repeats < 0:
        raise LoaderError(f"aug_repeats={aug_repeats} must be >= 0")
    if not os.path.isdir(data_dir):
        raise LoaderError(f"dataset dir {data_dir} does not exist; convert a dataset first, e.g. "
                          f"`python tools/convert_datasets.py digits --out data` and pass data/digits")
    try:
        manifest = read_manifest(data_dir)
    except ManifestError as e:
        raise LoaderError(str(e)) from None
    if split not in manifest["splits"]:
        raise LoaderError(f"{data_dir}: the manifest has no split {split!r} (it has {sorted(manifest['splits'])})")
    module_name, class_name, fmt, package = BACKENDS[backend]
    if split not in manifest.get("formats", {}).get(fmt, {}):
        usable = [b for b, spec in BACKENDS.items() if split in manifest.get("formats", {}).get(spec[2], {})]
        raise LoaderError(f"{data_dir}: backend {backend!r} reads the {fmt!r} format, which was not converted "
                          f"for split {split!r}; run tools/convert_datasets.py with --formats {fmt} for this "
                          f"dataset" + (f", or use --backend {' or '.join(usable)}" if usable else ""))
    _check_files(data_dir, manifest["formats"][fmt][split])
    _warn_if_upsampled(data_dir, manifest, image_size)
    device = _resolve_device(device)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if (e.name or "").startswith("pipelines."):  # a part of neatt itself, whose message says what to do
            raise LoaderError(f"backend {backend!r} is not usable here: {e}") from None
        raise LoaderError(f"backend {backend!r} is not usable here ({e}); install it with "
                          f"`pip install {package}` or pick another backend") from None

    augment = AugmentConfig() if augment is None else augment
    augment = dataclasses.replace(augment, img_size=image_size)  # timm derives translate_const from it
    if not train:
        augment = dataclasses.replace(augment, aa=None, reprob=0.0, hflip=0.0, color_jitter=0.0)
    hflip = augment.hflip  # the backend flips the crops (see the module docstring), DeviceAugment does the rest
    augment = dataclasses.replace(augment, hflip=0.0)
    return getattr(module, class_name)(
        data_dir, manifest, split=split, batch_size=batch_size, image_size=image_size, train=train,
        rank=rank, world_size=world_size, seed=seed, device=device, num_workers=num_workers,
        augment=DeviceAugment(augment), crop_pct=crop_pct, drop_last=train if drop_last is None else drop_last,
        scale=scale, ratio=ratio, hflip=hflip, repeats=repeats, interpolation=augment.interpolation)
