"""FFCV backend: JPEG decode + crop + resize in FFCV's compiled (numba) pipeline, then on-device augment.

Two things differ from FFCV's stock ``RandomResizedCropRGBImageDecoder``, on purpose:

* Determinism. The stock decoder draws crops with ``np.random`` inside a numba ``prange`` loop, so which sample
  gets which draw depends on thread scheduling and an exact resume is impossible. Here every sample's window
  comes from ``pipelines.crop`` (a pure function of seed, epoch and the sample's crop key), written into a table that
  the compiled decoder reads through a raw pointer: numba freezes arrays captured by a closure as compile-time
  constants, and recompiling every epoch would cost seconds.
* Interpolation. The stock decoders resize with OpenCV's ``INTER_AREA`` (checked: ``ffcv.libffcv.resize_crop``
  equals ``cv2.resize(..., INTER_AREA)`` exactly). Here the resize is Pillow's antialiased bicubic
  (``ImagingResample``: 22-bit fixed-point coefficients, two passes with 8-bit results, in Pillow's order;
  rewritten for numba), which is what timm's torchvision transforms use (or its bilinear filter, for
  ``--train-interpolation bilinear`` or ``random``). It equals Pillow's resize bit for bit.
  Exact is not slow here: the loops are ordered so that both passes vectorize, and the resize costs about a third
  of OpenCV's ``INTER_AREA`` at these scales (0.34 against 1.08 ms for a typical 224 px crop of a 400x350 photo).
* Decoding. FFCV's ``imdecode`` decodes the whole JPEG with libjpeg-turbo's fast IDCT, a few levels off Pillow's
  decode. Here ``pipelines/_jpeg_window.c`` decodes only the crop's rows and columns (nothing below the window;
  above it only the entropy decoding), with Pillow's settings: the window equals Pillow's decode bit for bit, so
  an FFCV sample is exactly torchvision's transform of the stored JPEG, and a train crop of a 400x350 photo
  decodes in about 80% of the time (docs/benchmarks.md, 2026-11-27).

The epoch order is ``pipelines.sharding``'s: FFCV's ``Loader`` is built ``SEQUENTIAL`` over this rank's indices,
and before each epoch its traversal order is replaced by one returning exactly the batches still to read (a
resumed epoch decodes nothing it skips). FFCV's ``Loader`` cannot take a custom ``TraversalOrder`` class
directly (its ``isinstance`` check expects an instance that it then calls).
"""
import ctypes
import math
import os
from typing import Iterator, Tuple

import numpy as np
import torch
from numba import carray, njit, set_parallel_chunksize, types
from numba.core import cgutils
from numba.extending import intrinsic

from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.loader import Loader as _FfcvLoader, OrderOption
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

from .augment.cpu_kernels import pack_row
from .base import Loader
from .crop import bilinear_flags, eval_resize_geometry, flip_flags, rrc_windows

try:
    from . import _jpeg_window
except ImportError as e:
    raise ImportError("its JPEG decoder pipelines/_jpeg_window.c is not built: run `make setup` (or `pip install -e "
                      ".` in the repository) on a machine with libjpeg's headers (apt: libjpeg-dev)",
                      name="pipelines._jpeg_window") from e

__all__ = ["FfcvLoader", "TableCropDecoder", "resample"]

_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c
_HALF = 1 << (_PRECISION_BITS - 1)  # rounds the fixed-point sums

# int neatt_decode_window(jpeg, size, top, left, height, width, out, stride): see pipelines/_jpeg_window.c
decode_window = ctypes.CDLL(_jpeg_window.__file__).neatt_decode_window
decode_window.restype = ctypes.c_int
decode_window.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                          ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint64]


@intrinsic
def _voidptr(typingctx, address):
    """An integer address as a ``void*``, so compiled code can view a live numpy buffer (``carray``)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(address), codegen


# Plain njit rather than FFCV's Compiler.compile: it adds fastmath, which may reorder the float arithmetic of the
# coefficients and lose Pillow's results. Signatures are given, so everything compiles (or loads from the cache)
# at import: a dispatcher that compiles lazily inside FFCV's thread was seen to fail there with a KeyError from
# numba's overload table (and FFCV's thread then dies silently).
_U8_HWC = types.Array(types.uint8, 3, "C")
_U8_HWC_RO = types.Array(types.uint8, 3, "C", readonly=True)  # FFCV's raw records are read-only memory
_I64 = types.int64


@njit(types.float64(types.float64), cache=True)
def _bicubic(x):
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@njit(types.float64(types.float64), cache=True)
def _triangle(x):
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


@njit(types.Tuple((types.int64[:, ::1], types.int64[:, ::1]))(_I64, _I64, _I64, _I64, _I64), cache=True)
def _coeffs(in_size, out_size, first, count, bilinear):
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for output positions ``first .. first+count``
    of an ``in_size -> out_size`` bicubic (or, if ``bilinear``, bilinear: Pillow's triangle filter of support 1)
    resize: (bounds (count, 2) = start, taps; int64 fixed-point weights)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = (1.0 if bilinear else 2.0) * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((count, 2), np.int64)
    kk = np.zeros((count, ksize), np.int64)
    w = np.zeros(ksize, np.float64)
    ss = 1.0 / filterscale
    for t in range(count):
        center = (first + t + 0.5) * scale
        xmin = int(center - support + 0.5)
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        ww = 0.0
        for x in range(xmax):
            arg = (x + xmin - center + 0.5) * ss
            w[x] = _triangle(arg) if bilinear else _bicubic(arg)
            ww += w[x]
        for x in range(xmax):
            k = w[x] / ww if ww != 0.0 else w[x]
            kk[t, x] = int(-0.5 + k * (1 << _PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << _PRECISION_BITS))
        bounds[t, 0] = xmin
        bounds[t, 1] = xmax
    return bounds, kk


@njit(inline='always')
def _weighted_rows(acc, rows, start, taps, weights, first):
    """acc[:] = _HALF + sum over k < taps of weights[k] * rows[start + k][first:first + acc.size] (Pillow's int32
    sum; whole rows, so it vectorizes)."""
    acc[:] = _HALF
    for k in range(taps):
        wk = weights[k]
        row = rows[start + k]
        if first:  # sliced: an index i + first would not vectorize
            row = row[first:first + acc.size]
        for i in range(acc.shape[0]):
            acc[i] += np.int32(row[i]) * wk


@njit(inline='always')
def _clip8(acc, out):
    """out[:] = Pillow's clip8 of the fixed-point sums acc[:] (vectorizes)."""
    for i in range(acc.size):
        out[i] = min(max(acc[i] >> _PRECISION_BITS, 0), 255)


@njit(inline='always')
def _vertical_pass(rows, first, bounds, weights, shift, out):
    """Pillow's vertical pass: out[yy] = the clipped weighted sum of the source rows ``rows[bounds[yy, 0] + shift
    + k]``, each read from byte ``first`` on."""
    acc = np.empty(out.shape[1], np.int32)
    for yy in range(out.shape[0]):
        _weighted_rows(acc, rows, bounds[yy, 0] + shift, bounds[yy, 1], weights[yy], first)
        _clip8(acc, out[yy])


@njit(inline='always')
def _horizontal_pass(rows, first, cols, bounds, weights, col0, flip, out):
    """Pillow's horizontal pass of ``cols`` RGB pixels of each row of ``rows`` from byte ``first`` (source column
    ``col0 + x``) into ``out`` (rows, out width * 3), mirrored if ``flip``. The window's columns are first copied into
    rows (a transpose of 4-byte pixel words: one store per pixel rather than three), so that each output column is
    a weighted sum of whole rows and vectorizes; its result is stored transposed back, and mirrored in that store."""
    n = out.shape[0]
    ow = out.shape[1] // 3
    columns = np.empty((cols, n * 4), np.uint8)  # column x is row x here, RGB0 per pixel
    words = columns.reshape(-1).view(np.uint32)
    packed = np.empty(cols, np.uint32)
    for r in range(n):
        pack_row(rows[r][first:first + 3 * cols], packed)
        for x in range(cols):
            words[x * n + r] = packed[x]
    acc = np.empty(n * 4, np.int32)
    pixels = np.empty(n * 4, np.uint8)
    for xx in range(ow):
        _weighted_rows(acc, columns, bounds[xx, 0] - col0, bounds[xx, 1], weights[xx], 0)
        _clip8(acc, pixels)
        xo = 3 * (ow - 1 - xx if flip else xx)  # where output column xx lands
        for r in range(n):
            out[r, xo], out[r, xo + 1], out[r, xo + 2] = pixels[4 * r], pixels[4 * r + 1], pixels[4 * r + 2]


@njit([types.void(src, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _U8_HWC)
       for src in (_U8_HWC, _U8_HWC_RO)], cache=True, nogil=True)
def resample(src, y0, x0, h, w, out_h, out_w, oy, ox, flip, bilinear, dst):
    """Pillow's bicubic (``bilinear``: bilinear) resize of ``src[y0:y0+h, x0:x0+w]`` (HWC uint8) to
    ``out_h x out_w``, writing the ``dst.shape[:2]`` window at ``(oy, ox)`` of the result into ``dst``, mirrored
    left-right if ``flip``: train passes the crop and ``out = dst size``; val passes the whole image, the resized
    size and the center-crop offset.

    Pillow's arithmetic (int32 sums of 8-bit pixels times 22-bit weights, rounded and clipped to 8 bits after
    each pass), and Pillow's order of the two passes (``ImagingResampleInner`` since Pillow 13: vertical first when
    the height shrinks by more than twice as many pixels as the width, horizontal first otherwise; hence
    ``pillow>=13``), computed only for the rows and columns the window needs. Integer sums do not depend on their
    order, so this is bit-exact.
    """
    oh, ow = dst.shape[0], dst.shape[1]
    hb, hk64 = _coeffs(w, out_w, ox, ow, bilinear)
    vb, vk64 = _coeffs(h, out_h, oy, oh, bilinear)
    hk, vk = hk64.astype(np.int32), vk64.astype(np.int32)
    row0 = vb[0, 0]  # the source rows and columns that the output window reads
    rows = vb[oh - 1, 0] + vb[oh - 1, 1] - row0
    col0 = hb[0, 0]
    cols = hb[ow - 1, 0] + hb[ow - 1, 1] - col0
    src_rows = src.reshape(src.shape[0], -1)
    first = 3 * (x0 + col0)
    flat = dst.reshape(oh, ow * 3)
    if h - out_h > 0 and h - out_h > 2 * (w - out_w):
        tmp = np.empty((oh, cols * 3), np.uint8)  # vertical pass result, 8-bit as in Pillow
        _vertical_pass(src_rows, first, vb, vk, y0, tmp)
        _horizontal_pass(tmp, 0, cols, hb, hk, col0, flip, flat)
    else:
        tmp = np.empty((rows, ow * 3), np.uint8)  # horizontal pass result
        _horizontal_pass(src_rows[y0 + row0:y0 + row0 + rows], first, cols, hb, hk, col0, flip, tmp)
        _vertical_pass(tmp, 0, vb, vk, -row0, flat)


class TableCropDecoder(ResizedCropRGBImageDecoder):
    """FFCV ``RGBImageField`` decoder: decode, then resize the window that the table names for each sample.

    Parameters
    ----------
    output_size : tuple of int
        (height, width) of the output.
    table : np.ndarray
        int64 ``(copies * num_samples, 10)``: ``y0, x0, h, w, out_h, out_w, oy, ox, flip, bilinear`` (see
        ``resample``) for the ``j``-th read of sample ``i`` in a pass at row ``j * num_samples + i``: under
        repeated augmentation on fewer ranks than copies, a rank reads a sample up to ``copies`` times per epoch,
        each time with its own crop.
    seen : np.ndarray
        int64 ``(num_samples,)``: how often each sample was read so far in the pass (the loader sets it before
        a pass, the decoder counts on: FFCV decodes a pass's batches one after another).
    The loader rewrites both in place between passes; they must outlive the loader.
    """

    def __init__(self, output_size, table: np.ndarray, seen: np.ndarray):
        super().__init__(output_size)
        assert table.dtype == np.int64 and table.flags.c_contiguous and table.shape[1] == 10
        assert seen.dtype == np.int64 and seen.flags.c_contiguous and table.shape[0] % len(seen) == 0
        self.table, self.seen = table, seen

    def generate_code(self):
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        address, num_rows = self.table.ctypes.data, self.table.shape[0]
        seen_address, num_samples = self.seen.ctypes.data, len(self.seen)
        repeated = num_rows > num_samples  # a constant of the compiled code

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            table = carray(_voidptr(address), (num_rows, 10), np.int64)
            seen = carray(_voidptr(seen_address), (num_samples,), np.int64)
            # one image at a time to whichever thread is free: crops differ in cost, and numba's default even
            # split of a batch left a thread idle at its end (FFCV's own decoders keep that split)
            chunk_size = set_parallel_chunksize(1)
            failures = 0
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                width = np.int64(field["width"])
                row = source_ix
                if repeated:  # the how-manieth read of this sample: before this batch, then earlier in it
                    copy = seen[source_ix]
                    for k in range(dst_ix):
                        copy += batch_indices[k] == source_ix
                    row = copy * num_samples + source_ix
                t = table[row]
                if field["mode"] == jpg:  # decode the window's rows, from an iMCU edge at or left of its columns
                    temp_buffer = temp_storage[dst_ix]
                    left = decode_window(image_data.ctypes.data, image_data.size, t[0], t[1], t[2], t[3],
                                         temp_buffer.ctypes.data, 3 * width)
                    image = temp_buffer.reshape(-1)[:3 * t[2] * width].reshape(t[2], width, 3)
                    y0, x0 = 0, left
                else:
                    image = image_data.reshape(np.int64(field["height"]), width, 3)
                    y0, x0 = t[0], t[1]
                if x0 >= 0:
                    resample(image, y0, x0, t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], destination[dst_ix])
                else:  # counted, raised after the loop: a raise inside it would stop numba running it in parallel
                    failures += 1
            set_parallel_chunksize(chunk_size)
            if repeated:
                for k in range(len(batch_indices)):
                    seen[batch_indices[k]] += 1
            if failures:
                raise ValueError("a JPEG record of this .beton does not decode: it is damaged; re-run "
                                 "tools/convert_datasets.py with --force")
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode

    @property
    def get_crop_generator(self):  # required by the abstract base; the crop comes from the table
        return None


def _read_numbers(indices: np.ndarray) -> np.ndarray:
    """For each position of ``indices``, how many earlier positions hold the same sample (0 for a first read)."""
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # where each sample's run begins
    numbers = np.empty(len(indices), np.int64)
    numbers[order] = np.arange(len(indices)) - np.repeat(starts, np.diff(np.r_[starts, len(indices)]))
    return numbers


class _PlannedOrder(TraversalOrder):
    """Exactly ``indices``, in order, whatever the epoch (the order comes from ``pipelines.sharding``)."""

    def sample_order(self, epoch: int):
        return self.indices


class _EpochThread(EpochIterator):
    """FFCV's epoch thread, keeping its exception for the consumer: FFCV's own only prints it and dies, and its
    ``__next__`` then waits forever."""
    error = None

    def run(self):
        try:
            super().run()
        except Exception as e:  # reported by FfcvLoader._iter_uint8, in the training process's own traceback
            self.error = e


class _ReportingFfcvLoader(_FfcvLoader):
    def __iter__(self):  # FFCV's Loader.__iter__ (ffcv 1.0.2), with the thread above
        Compiler.set_num_threads(self.num_workers)
        order = self.next_traversal_order()
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        return _EpochThread(self, order[:len(self) * self.batch_size])


class FfcvLoader(Loader):
    """Reads ``<data_dir>/<split>.beton``; ``num_workers`` is FFCV's decoding thread count."""

    def __init__(self, data_dir: str, manifest: dict, **kwargs):
        super().__init__(data_dir, manifest, **kwargs)
        path = os.path.join(data_dir, manifest["formats"]["ffcv"][self.split]["file"])
        # a rank reads a sample at most ceil(repeats / world_size) times per epoch (pipelines.sharding)
        self.table = np.zeros((-(-self.repeats // self.world_size) * self.num_samples, 10), np.int64)
        self._seen = np.zeros(self.num_samples, np.int64)
        size = (self.image_size, self.image_size)
        cuda = self.device.type == "cuda"
        to_device = [ToDevice(self.device, non_blocking=True)] if cuda else []
        self._decoder = TableCropDecoder(size, self.table, self._seen)
        pipelines = {
            "image": [self._decoder, ToTensor(), *to_device,
                      ToTorchImage(channels_last=True, convert_back_int16=False)],
            "label": [IntDecoder(), ToTensor(), *to_device],
        }
        self._ffcv = _ReportingFfcvLoader(path, batch_size=self.batch_size, num_workers=max(1, self.num_workers),
                                          order=OrderOption.SEQUENTIAL, indices=self.order.indices(0),
                                          pipelines=pipelines, drop_last=False, os_cache=True)
        if self._ffcv.reader.num_samples != self.num_samples:
            raise ValueError(f"{path} holds {self._ffcv.reader.num_samples} samples, the manifest says "
                             f"{self.num_samples}; re-run tools/convert_datasets.py with --force")
        reader = self._ffcv.reader  # metadata columns are named f0, f1, ... in field order
        meta = reader.metadata[f"f{list(reader.handlers).index('image')}"]
        self._heights = meta["height"].astype(np.int64)
        self._widths = meta["width"].astype(np.int64)
        if not self.train:  # val windows do not change between epochs
            for i in range(self.num_samples):
                rh, rw, top, left = eval_resize_geometry(self._heights[i], self._widths[i], self.image_size,
                                                         self.crop_pct)
                self.table[i] = 0, 0, self._heights[i], self._widths[i], rh, rw, top, left, 0, 0

    def _iter_uint8(self, epoch: int, start_batch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        indices, keys = self.order.remaining_with_keys(epoch, start_batch)
        if len(indices) == 0:
            return
        # FFCV sizes its batch buffers from the decoder's output size at every pass, as ffcv-imagenet's
        # progressive resizing relies on (set_image_size); the compiled code reads the sizes from the buffers
        self._decoder.output_size = (self.image_size, self.image_size)
        if self.train:
            rows = indices
            if len(self.table) > self.num_samples:  # a rank reads some samples more than once: a row per read
                whole = self.order.indices(epoch)  # the pass from its start: which read of its sample each one is
                done = len(whole) - len(indices)
                self._seen[:] = np.bincount(whole[:done], minlength=self.num_samples)
                rows = _read_numbers(whole)[done:] * self.num_samples + indices
            win = rrc_windows(self._heights[indices], self._widths[indices], keys, self.seed, epoch, self.scale,
                              self.ratio)
            self.table[rows, 0:4] = win
            self.table[rows, 4:6] = self.image_size
            self.table[rows, 6:8] = 0
            self.table[rows, 8] = flip_flags(keys, self.seed, epoch, self.hflip)
            self.table[rows, 9] = bilinear_flags(keys, self.seed, epoch, self.interpolation)
        order = _PlannedOrder(self._ffcv)
        order.indices = indices.astype(np.uint64)
        self._ffcv.traversal_order = order
        epoch_iterator = iter(self._ffcv)
        try:
            while True:
                # on an exception FFCV's thread ends without a batch, and its __next__ would wait forever
                while epoch_iterator.output_queue.empty() and epoch_iterator.is_alive():
                    epoch_iterator.join(0.002)
                if epoch_iterator.output_queue.empty():
                    raise RuntimeError(f"FFCV's decoding thread for {self._ffcv.fname} stopped mid-epoch: "
                                       f"{epoch_iterator.error}") from epoch_iterator.error
                try:
                    images, labels = next(epoch_iterator)
                except StopIteration:
                    return
                # FFCV reuses its buffers a few batches later: labels are copied, images are consumed by augment
                yield images, labels.view(-1).to(torch.int64, copy=True)
        finally:  # a pass cut short: stop FFCV's thread before the table is rewritten for another pass
            epoch_iterator.close()
            epoch_iterator.join()
