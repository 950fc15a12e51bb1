"""Random access to a split's JPEG bytes and labels in the DALI webdataset shards, through their index files.

The torch and DALI backends read samples in the order ``pipelines.sharding`` gives, so they need sample ``i``
by number, not a tar stream. The shards' ``.idx`` files (DALI's ``wds2idx`` format ``v1.2``: a header line
``v1.2 <count>``, then one line per sample of ``<ext> <offset> <size> <name>`` groups) give each member's byte
range; the tars are memory-mapped and a sample's JPEG is a zero-copy slice. This reader works for every
converted dataset, since the converter always writes the DALI shards (docs/architecture.md section 1).
"""
import mmap
import os
from typing import List, Tuple

import numpy as np

__all__ = ["ShardReader"]


def _parse_index(path: str, expected: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(jpg offsets, jpg sizes, cls offsets, cls sizes) of the samples listed in one ``.idx`` file."""
    with open(path, "r") as f:
        header = f.readline().split()
        if len(header) != 2 or not header[0].startswith("v1"):
            raise ValueError(f"{path}: not a DALI webdataset index (header {header!r}); re-run the converter")
        lines = f.read().splitlines()
    if int(header[1]) != expected or len(lines) != expected:
        raise ValueError(f"{path}: lists {len(lines)} samples but the manifest says {expected}; "
                         "the dataset dir is incomplete: re-run tools/convert_datasets.py with --force")
    table = np.zeros((expected, 4), dtype=np.int64)
    for k, line in enumerate(lines):
        parts = line.split()
        for g in range(0, len(parts), 4):
            ext, off, size = parts[g], int(parts[g + 1]), int(parts[g + 2])
            if ext == "jpg":
                table[k, 0:2] = off, size
            elif ext == "cls":
                table[k, 2:4] = off, size
        if table[k, 1] == 0 or table[k, 3] == 0:
            raise ValueError(f"{path}: sample {k} lacks a .jpg or .cls member; re-run the converter")
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3]


class ShardReader:
    """Sample ``i`` of a split as (JPEG bytes, label), from the shards listed in the manifest.

    Parameters
    ----------
    data_dir : str
        The dataset directory.
    shards : list of dict
        ``manifest["formats"]["dali"][split]["shards"]``: ``tar``, ``index``, ``start``, ``count``.
    """

    def __init__(self, data_dir: str, shards: List[dict]):
        self.data_dir = data_dir
        self.shards = sorted(shards, key=lambda s: s["start"])
        starts = [s["start"] for s in self.shards]
        counts = [s["count"] for s in self.shards]
        if starts != list(np.cumsum([0] + counts[:-1])):
            raise ValueError(f"{data_dir}: DALI shards do not cover samples contiguously (starts {starts}, "
                             f"counts {counts}); re-run tools/convert_datasets.py with --force")
        self.num_samples = int(sum(counts))
        self.tar_paths = [os.path.join(data_dir, s["tar"]) for s in self.shards]
        parts = [_parse_index(os.path.join(data_dir, s["index"]), s["count"]) for s in self.shards]
        self.shard_of = np.repeat(np.arange(len(self.shards)), counts)
        self.jpg_offset, self.jpg_size, cls_offset, cls_size = (np.concatenate(p) for p in zip(*parts))
        self._maps = None
        self.labels = np.array([int(self._member(i, cls_offset[i], cls_size[i])) for i in range(self.num_samples)],
                               dtype=np.int64)

    def _member(self, i: int, offset: int, size: int) -> bytes:
        if self._maps is None:  # opened lazily, per process: mmaps are not pickled into DataLoader workers
            self._maps = []
            for p in self.tar_paths:
                with open(p, "rb") as f:
                    self._maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return self._maps[self.shard_of[i]][offset:offset + size]

    def jpeg(self, i: int) -> bytes:
        """The stored JPEG bytes of sample ``i``."""
        return self._member(i, self.jpg_offset[i], self.jpg_size[i])

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None
        return state
