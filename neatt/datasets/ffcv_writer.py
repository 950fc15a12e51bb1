"""FFCV output: ``<split>.beton`` with fields ``image`` (RGBImageField) and ``label`` (IntField).

Why not FFCV's ``DatasetWriter`` with its own parallel workers: its workers claim file pages in whatever order they
finish, report their allocation tables in that order, and draw ``write_mode="proportion"`` decisions from
``np.random.rand()``, so two runs give different files. neatt decodes, resizes and encodes in its own worker pool
(``neatt.datasets.convert``), appends each finished record in sample order to a staging file, and then lets
``DatasetWriter`` (one worker, so pages follow sample order) copy the records into the ``.beton``. The image field's
``encode`` is swapped for one that stores the already-encoded record: same metadata and storage as
``RGBImageField.encode`` (mode, height, width, data pointer), minus the second resize and encode.
"""
from __future__ import annotations

import os

import numpy as np

from .images import PreparedImage

__all__ = ["BetonStaging", "write_beton"]

PARTIAL = ".partial"
_JPG, _RAW = 0, 1  # ffcv.fields.rgb_image.IMAGE_MODES


class BetonStaging:
    """Records of one split, appended in sample order to ``<final>.staging.partial``: JPEG bytes or raw pixels."""

    def __init__(self, final_path: str):
        self.path = final_path + ".staging" + PARTIAL
        self._f = open(self.path, "wb")
        self.records = []  # (offset, nbytes, mode, height, width, label)
        self._offset = 0

    def write(self, img: PreparedImage, label: int) -> None:
        data, mode = (img.raw.tobytes(), _RAW) if img.raw is not None else (img.jpeg, _JPG)
        self._f.write(data)
        self.records.append((self._offset, len(data), mode, img.height, img.width, int(label)))
        self._offset += len(data)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def remove(self) -> None:
        self.close()
        if os.path.exists(self.path):
            os.remove(self.path)


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


def write_beton(path: str, staging: BetonStaging, policy) -> None:
    """Write ``path`` (through ``path.partial`` and a rename) from a closed staging file, then delete the staging."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter, MIN_PAGE_SIZE

    staging.close()
    image = RGBImageField(write_mode=policy.write_mode, max_resolution=policy.max_resolution,
                          jpeg_quality=policy.jpeg_quality, compress_probability=policy.compress_probability)
    image.encode = _encode_staged
    largest = max((r[1] for r in staging.records), default=0)
    # A record must fit in one page; room for >= 4 of the largest keeps padding small, and small datasets do not get
    # FFCV's 8 MiB default pages (a page is also the loader's read unit).
    page_size = max(MIN_PAGE_SIZE, 4 << int(largest).bit_length())
    tmp = path + PARTIAL
    writer = DatasetWriter(tmp, {"image": image, "label": IntField()}, page_size=page_size, num_workers=1)
    writer.from_indexed_dataset(_StagedRecords(staging), chunksize=1000)
    os.replace(tmp, path)
    staging.remove()
