"""DALI backend: JPEG decode + crop + cubic resize in a DALI pipeline, on the GPU when there is one.

The JPEG bytes are read from the webdataset shards through their index (``pipelines.shard_reader``) and fed
with ``fn.external_source`` in the order ``pipelines.sharding`` gives, together with each sample's window from
``pipelines.crop``: DALI's own readers and random-crop decoders shuffle and draw crops on their own, which
would break the shared order and exact resume. The window is applied as the ROI of ``fn.resize``
(``INTERP_CUBIC``, or per sample ``INTERP_LINEAR`` for ``--train-interpolation bilinear/random``, antialiased):
train the random-resized-crop window, val the center crop of timm's eval resize expressed in source pixels.

``device='cuda'``: ``fn.decoders.image(device='mixed')`` (nvJPEG) and the resize run on the GPU.
``device='cpu'``: the same graph with CPU operators and ``device_id=None``, so no CUDA call is ever made.
DALI's cubic resampling and libjpeg-turbo/nvJPEG decoding are not Pillow's, so DALI batches are close to, not
equal to, the torch backend's (tests/test_loader.py states the tolerance).
"""
import io
from typing import Iterator, Tuple

import numpy as np
import torch
from PIL import Image

from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from .base import Loader
from .crop import bilinear_flags, eval_resize_geometry, flip_flags, rrc_windows
from .shard_reader import ShardReader
from .transfer import to_device

__all__ = ["DaliLoader"]

_CUBIC, _LINEAR = np.array([int(types.INTERP_CUBIC), int(types.INTERP_LINEAR)], np.int32)  # per-sample filters

# nvJPEG's settings on a GPU ("mixed" decoding): libjpeg's fancy chroma upsampling, as DALI's CPU decoder and
# Pillow decode (nvJPEG's default differs), and the buffer preallocations of NVIDIA's ImageNet example
# (docs/examples/use_cases/pytorch/resnet50), so that larger images met later in a pass need no reallocation
MIXED_DECODER_ARGS = dict(jpeg_fancy_upsampling=True, device_memory_padding=211025920, host_memory_padding=140544512)


class DaliLoader(Loader):
    """``num_workers`` is DALI's CPU thread count; a fresh pipeline is built per epoch pass (cheap next to an
    epoch), so a pass cut short leaves no prefetched batches behind."""

    def __init__(self, data_dir: str, manifest: dict, **kwargs):
        super().__init__(data_dir, manifest, **kwargs)
        self.reader = ShardReader(data_dir, manifest["formats"]["dali"][self.split]["shards"])
        if len(self.reader) != self.num_samples:
            raise ValueError(f"{data_dir}: DALI shards of {self.split!r} hold {len(self.reader)} samples, the "
                             f"manifest says {self.num_samples}; re-run tools/convert_datasets.py with --force")
        self._sizes = np.zeros((self.num_samples, 2), dtype=np.int32)  # (width, height); 0: not read yet

    def _image_sizes(self, idx: np.ndarray, jpegs) -> np.ndarray:
        """(width, height) of the samples ``idx``: read from each JPEG's header once, then kept (8 bytes a
        sample), since that read was most of the feed's host time (75 of 86 µs an image on the 2-core VM)."""
        sizes = self._sizes[idx]
        for k in np.flatnonzero(sizes[:, 0] == 0):
            sizes[k] = self._sizes[idx[k]] = Image.open(io.BytesIO(jpegs[k])).size
        return sizes.astype(np.int64)

    def _windows(self, idx: np.ndarray, keys: np.ndarray, epoch: int, jpegs) -> Tuple[np.ndarray, np.ndarray]:
        """ROI start/end ``(y, x)`` in source pixels (float32, shape (n, 2)) of each sample's output; ``idx``
        and ``keys``: the samples' indices and crop keys (``ShardedOrder.remaining_with_keys``)."""
        sizes = self._image_sizes(idx, jpegs)
        widths, heights = sizes[:, 0], sizes[:, 1]
        if self.train:
            top, left, h, w = rrc_windows(heights, widths, keys, self.seed, epoch, self.scale, self.ratio).T
            start, end = np.stack([top, left], 1), np.stack([top + h, left + w], 1)
        else:
            geo = np.array([eval_resize_geometry(h, w, self.image_size, self.crop_pct)
                            for h, w in zip(heights, widths)], dtype=np.float64).reshape(-1, 4)
            sy, sx = heights / geo[:, 0], widths / geo[:, 1]
            start = np.stack([geo[:, 2] * sy, geo[:, 3] * sx], 1)
            end = np.stack([(geo[:, 2] + self.image_size) * sy, (geo[:, 3] + self.image_size) * sx], 1)
        return start.astype(np.float32), end.astype(np.float32)

    def _batches(self, epoch: int, start_batch: int):
        indices, keys = self.order.remaining_with_keys(epoch, start_batch)
        for b in range(0, len(indices), self.batch_size):
            idx, key = indices[b:b + self.batch_size], keys[b:b + self.batch_size]
            jpegs = [self.reader.jpeg(int(i)) for i in idx]
            roi_start, roi_end = self._windows(idx, key, epoch, jpegs)
            flips = flip_flags(key, self.seed, epoch, self.hflip).astype(np.int32)
            filters = np.where(bilinear_flags(key, self.seed, epoch, self.interpolation), _LINEAR, _CUBIC)
            yield ([np.frombuffer(j, dtype=np.uint8) for j in jpegs], list(roi_start), list(roi_end),
                   list(self.reader.labels[idx].reshape(-1, 1)), list(flips), list(filters))

    def _pipeline(self, source) -> Pipeline:
        cuda = self.device.type == "cuda"
        pipe = Pipeline(batch_size=self.batch_size, num_threads=max(1, self.num_workers),
                        device_id=(self.device.index or 0) if cuda else None, seed=self.seed,
                        prefetch_queue_depth=2)
        with pipe:
            jpegs, roi_start, roi_end, labels, flips, filters = fn.external_source(
                source=source, num_outputs=6, batch=True,
                dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT64, types.INT32, types.INT32])
            filters = fn.cast(filters, dtype=types.INTERP_TYPE)  # external_source cannot be fed DALIInterpType
            images = fn.decoders.image(jpegs, device="mixed" if cuda else "cpu", output_type=types.RGB,
                                       **(MIXED_DECODER_ARGS if cuda else {}))
            images = fn.resize(images, size=[self.image_size, self.image_size], roi_start=roi_start,
                               roi_end=roi_end, roi_relative=False, interp_type=filters,
                               antialias=True, dtype=types.UINT8)
            images = fn.flip(images, horizontal=flips, vertical=0)
            pipe.set_outputs(images, labels)
        pipe.build()
        return pipe

    def _iter_uint8(self, epoch: int, start_batch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if start_batch >= len(self):  # nothing left (_batches computes the epoch's order)
            return
        pipe = self._pipeline(self._batches(epoch, start_batch))
        try:
            while True:
                try:
                    images, labels = pipe.run()
                except StopIteration:
                    return
                yield self._to_torch(images), self._to_torch(labels).view(-1)
        finally:
            del pipe

    def _to_torch(self, tensor_list) -> torch.Tensor:
        """A DALI batch (HWC per sample) as a torch tensor on ``self.device``, copied (DALI reuses its buffers).
        On a GPU pipeline the images come from the GPU and the labels, which no operator touches, from the CPU
        (moved without a host-device sync, pipelines.transfer)."""
        out = to_device(torch.from_dlpack(tensor_list.as_tensor()).clone(), self.device)
        return out.permute(0, 3, 1, 2) if out.dim() == 4 else out
