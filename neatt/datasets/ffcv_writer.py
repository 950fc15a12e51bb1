"""FFCV output: ``<split>.beton`` with fields ``image`` (RGBImageField) and ``label`` (IntField).

Why not FFCV's ``DatasetWriter.from_indexed_dataset`` with its parallel workers: its workers claim file pages in
whatever order they finish, report their allocation tables in that order, and draw ``write_mode="proportion"``
decisions from ``np.random.rand()``, so two runs give different files; and if a worker dies, its parent polls for
the missing samples forever. neatt decodes, resizes and encodes in its own worker pool (``neatt.datasets.convert``),
appends each finished record in sample order to a staging file, and then assembles the ``.beton`` in this process
with FFCV's own writer parts (``DatasetWriter.prepare``/``finalize`` for header, field descriptors and allocation
table, ``MemoryAllocator`` for pages, ``handle_sample`` per record), so pages follow sample order and any error is
raised here. The image field's ``encode`` is swapped for one that stores the already-encoded record: the same
metadata and storage as ``RGBImageField.encode`` (mode, height, width, data pointer), minus a second resize and encode.
"""
from __future__ import annotations

import os

import numpy as np

from .images import PreparedImage

__all__ = ["BetonStaging", "write_beton"]

PARTIAL = ".partial"
_JPG, _RAW = 0, 1  # ffcv.fields.rgb_image.IMAGE_MODES
_RECORD_FIELDS = 6


class BetonStaging:
    """Records of one split, appended in sample order to ``<final>.staging.partial`` (JPEG bytes or raw pixels),
    with their table ``(offset, nbytes, mode, height, width, label)`` kept in memory and, at each :meth:`flush`,
    appended to ``<final>.records.partial``, so that a conversion checkpoint can list both files.

    Args:
        final_path: the ``.beton`` to be written.
        resume: continue the files of an interrupted run's checkpoint (already cut back to its sizes).
    """

    def __init__(self, final_path: str, resume: bool = False):
        self.path = final_path + ".staging" + PARTIAL
        self.records_path = final_path + ".records" + PARTIAL
        self.records = []  # (offset, nbytes, mode, height, width, label)
        if resume:
            table = np.fromfile(self.records_path, dtype=np.int64).reshape(-1, _RECORD_FIELDS)
            self.records = [tuple(row) for row in table.tolist()]
        self._offset = self.records[-1][0] + self.records[-1][1] if self.records else 0
        if resume and os.path.getsize(self.path) != self._offset:
            raise RuntimeError(f"{self.path} holds {os.path.getsize(self.path)} bytes, its records {self._offset}")
        self._f = open(self.path, "ab" if resume else "wb")
        self._table = open(self.records_path, "ab" if resume else "wb")
        self._flushed = len(self.records)

    def write(self, img: PreparedImage, label: int) -> None:
        data, mode = (img.raw.tobytes(), _RAW) if img.raw is not None else (img.jpeg, _JPG)
        self._f.write(data)
        self.records.append((self._offset, len(data), mode, img.height, img.width, int(label)))
        self._offset += len(data)

    def flush(self) -> dict:
        """Hand every record so far to the OS (a checkpoint then fsyncs the files); return {path: size} of both."""
        np.asarray(self.records[self._flushed:], dtype=np.int64).reshape(-1, _RECORD_FIELDS).tofile(self._table)
        self._flushed = len(self.records)
        for f in (self._f, self._table):
            f.flush()
        return {self.path: self._offset, self.records_path: self._flushed * _RECORD_FIELDS * 8}

    def close(self) -> None:
        for f in (self._f, self._table):
            f.close()

    def remove(self) -> None:
        self.close()
        for p in (self.path, self.records_path):
            if os.path.exists(p):
                os.remove(p)


class _StagedRecords:
    """Indexable dataset over a staging file for ``DatasetWriter.from_indexed_dataset`` (opened lazily in its
    worker process)."""

    def __init__(self, staging: BetonStaging):
        self.path, self.records, self._f = staging.path, staging.records, None

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if self._f is None:
            self._f = open(self.path, "rb")
        offset, nbytes, mode, h, w, label = self.records[i]
        self._f.seek(offset)
        return (mode, h, w, np.frombuffer(self._f.read(nbytes), np.uint8)), label


def _encode_staged(destination, value, malloc):
    """``RGBImageField.encode`` for a record that is already resized and encoded."""
    mode, h, w, data = value
    destination["mode"] = mode
    destination["height"], destination["width"] = h, w
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


def write_beton(path: str, staging: BetonStaging, policy, progress: bool = False) -> None:
    """Write ``path`` (through ``path.partial`` and a rename) from a staging file, then delete the staging."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter, handle_sample
    from tqdm import tqdm

    staging.close()
    image = RGBImageField(write_mode=policy.write_mode, max_resolution=policy.max_resolution,
                          jpeg_quality=policy.jpeg_quality, compress_probability=policy.compress_probability)
    image.encode = _encode_staged
    largest = max((r[1] for r in staging.records), default=0)
    # A record must fit in one page; room for >= 4 of the largest keeps padding small, and small datasets do not get
    # FFCV's 8 MiB default pages (a page is also the loader's read unit).
    page_size = max(MIN_PAGE_SIZE, 4 << int(largest).bit_length())
    tmp = path + PARTIAL
    records = _StagedRecords(staging)
    writer = DatasetWriter(tmp, {"image": image, "label": IntField()}, page_size=page_size, num_workers=1)
    writer.num_samples = len(records)
    writer.prepare()
    try:
        metadata = np.frombuffer(writer.metadata_sm.buf, dtype=writer.metadata_type)
        allocator = MemoryAllocator(tmp, writer.data_region_start, page_size)
        names = writer.metadata_type.names
        with allocator:
            for i in tqdm(range(len(records)), desc=f"{os.path.basename(path)} assembly", unit="img",
                          disable=not progress, dynamic_ncols=True):
                handle_sample(records[i], i, names, metadata, allocator, writer.fields)
        del metadata  # the shared memory cannot close while a view of it exists
        writer.finalize(allocator.allocations)
    finally:
        writer.metadata_sm.close()
        writer.metadata_sm.unlink()
        if records._f is not None:
            records._f.close()
    os.replace(tmp, path)
    staging.remove()
