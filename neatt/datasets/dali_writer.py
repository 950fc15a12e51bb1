"""DALI output: webdataset tar shards plus their index files, written directly (no ``wds2idx`` run needed).

Layout (docs/architecture.md, section 1): ``dali/<split>-<k:05d>.tar`` with, for sample ``i``, the members
``<i:08d>.jpg`` (RGB baseline JPEG) and ``<i:08d>.cls`` (ASCII decimal label), and next to it
``dali/<split>-<k:05d>.idx`` in DALI's ``wds2idx`` v1.2 format::

    v1.2 <number of samples>
    jpg <data offset> <size> <key>.jpg cls <data offset> <size> <key>.cls
    ...

(offsets point at the member's data, i.e. just after its 512-byte tar header). ``fn.readers.webdataset(paths=...,
index_paths=..., ext=["jpg", "cls"])`` reads it and shards it by rank. Tar headers carry no time, owner or
permissions from the machine, so the same samples give byte-identical shards.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import Optional

__all__ = ["ShardWriter", "INDEX_VERSION", "shard_paths"]

INDEX_VERSION = "v1.2"
PARTIAL = ".partial"


def shard_paths(split: str, k: int) -> tuple:
    """(tar, index) paths of shard ``k`` of ``split``, relative to the dataset dir."""
    stem = os.path.join("dali", f"{split}-{k:05d}")
    return stem + ".tar", stem + ".idx"


class ShardWriter:
    """Appends samples in order and cuts a new shard every ``shard_size`` samples.

    Files are written as ``*.partial`` and only renamed by :meth:`commit`, so an interrupted run leaves nothing that
    looks complete. A conversion checkpoint (``neatt.datasets.resume``) lists the closed shards.
    Use :meth:`abort` to delete the partial files.

    Args:
        out_dir: the dataset dir (``dali/`` is created inside it).
        split: split name, the shard file prefix.
        shard_size: samples per shard (the last shard may hold fewer).
        closed: shards an interrupted run closed (its :attr:`shards`); writing goes on with the next one.
    """

    def __init__(self, out_dir: str, split: str, shard_size: int, closed: Optional[list] = None):
        if shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
        self.out_dir, self.split, self.shard_size = out_dir, split, shard_size
        os.makedirs(os.path.join(out_dir, "dali"), exist_ok=True)
        self.shards = list(closed or [])  # dicts for the manifest, one per closed shard
        self.count = sum(s["count"] for s in self.shards)
        self._tar = None
        self._index_lines = []

    def _open_shard(self):
        tar_rel, idx_rel = shard_paths(self.split, len(self.shards))
        self._cur = {"tar": tar_rel, "index": idx_rel, "start": self.count, "count": 0}
        self._file = open(os.path.join(self.out_dir, tar_rel + PARTIAL), "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._index_lines = []

    def _add_member(self, name: str, data: bytes) -> str:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        offset = self._tar.offset + tarfile.BLOCKSIZE  # USTAR with a short name: exactly one header block
        self._tar.addfile(info, io.BytesIO(data))
        return f"{name.rsplit('.', 1)[1]} {offset} {len(data)} {name}"

    def write(self, jpeg: bytes, label: int) -> None:
        """Add the next sample (its key is its index in the split)."""
        if self._tar is None:
            self._open_shard()
        key = f"{self.count:08d}"
        parts = [self._add_member(key + ".jpg", jpeg), self._add_member(key + ".cls", str(int(label)).encode())]
        self._index_lines.append(" ".join(parts))
        self.count += 1
        self._cur["count"] += 1
        if self._cur["count"] == self.shard_size:
            self._close_shard()

    def _close_shard(self):
        self._tar.close()  # writes the end-of-archive blocks; the file object stays ours
        self._tar = None
        self._file.close()
        with open(os.path.join(self.out_dir, self._cur["index"] + PARTIAL), "w") as f:
            f.write(f"{INDEX_VERSION} {len(self._index_lines)}\n")
            f.write("\n".join(self._index_lines) + "\n")
        self.shards.append(self._cur)

    def finish(self) -> None:
        """Close the last shard (still under its partial name)."""
        if self._tar is not None:
            self._close_shard()

    def partial_files(self) -> dict:
        """{relative path: size} of the closed shards' partial files."""
        rels = [s[k] + PARTIAL for s in self.shards for k in ("tar", "index")]
        return {rel: os.path.getsize(os.path.join(self.out_dir, rel)) for rel in rels}

    def commit(self) -> list:
        """Finish the last shard and rename every file to its final name; return the shard entries (without sizes
        and checksums, which the caller adds)."""
        self.finish()
        for s in self.shards:
            for rel in (s["index"], s["tar"]):
                os.replace(os.path.join(self.out_dir, rel + PARTIAL), os.path.join(self.out_dir, rel))
        return self.shards

    def close(self) -> None:
        """Stop writing (an interruption): the closed shards stay for a checkpoint to list; the unfinished shard's
        partial file is left as it is, for the next run to overwrite or delete."""
        if self._tar is not None:
            self._file.close()
            self._tar = None

    def abort(self) -> None:
        """Stop writing and delete this writer's partial files."""
        unfinished = [self._cur] if self._tar is not None else []
        self.close()
        for s in self.shards + unfinished:
            for rel in (s["tar"], s["index"]):
                p = os.path.join(self.out_dir, rel + PARTIAL)
                if os.path.exists(p):
                    os.remove(p)
