"""Checkpoints of one split's conversion pass, so that a killed conversion resumes where it stopped.

Each time the pass has written another ``shard_size`` samples (when a DALI shard closes) it hands a checkpoint to
:class:`CheckpointWriter`, which makes the output durable (fsyncs the closed shards, the FFCV staging file and its
record table) on a background thread and then writes ``<split>.resume.json`` atomically: how many samples the pass
had consumed, the label counts and skips so far, and the size of every partial file at that moment. A rerun with
the same source and settings cuts the partial files back to those sizes and goes on with the next sample; what was
written after the checkpoint is dropped and redone. The result is byte-identical to an uninterrupted run's, since a
sample's stored bytes depend only on the sample and its index (``images.prepare_image``) and the writers append in
sample order.

A checkpoint is not used, and the split is converted from its first sample, when the source's samples (paths and
labels; pixels for in-memory sources), the image policy or the shard size differ, when it lacks a format that the
rerun writes, or when one of its files is missing or shorter than recorded.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ..fileio import write_json_atomic

__all__ = ["CheckpointWriter", "SplitCheckpoint", "checkpoint_path", "checkpointed_files", "drop_checkpoint",
           "fingerprint"]

VERSION = 1
SUFFIX = ".resume.json"


def checkpoint_path(out_dir: str, split: str) -> str:
    return os.path.join(out_dir, split + SUFFIX)


def fingerprint(source, split: str, policy, shard_size: int) -> dict:
    """What a checkpoint must have been made with to be continued: the split's samples, image policy, shard size."""
    h = hashlib.sha256()
    samples = source.splits[split]
    for i, (item, label) in enumerate(samples):
        key = item.tobytes() if isinstance(item, np.ndarray) else source.relpath(item, i, split).encode()
        h.update(len(key).to_bytes(8, "little") + key + int(label).to_bytes(8, "little", signed=True))
    return {"samples": len(samples), "samples_sha256": h.hexdigest(), "image_policy": policy.as_dict(),
            "shard_size": shard_size}


@dataclass
class SplitCheckpoint:
    """A pass over ``split`` as far as it was durable.

    Attributes:
        split: the split's name.
        fingerprint: :func:`fingerprint` of the run that wrote it.
        done: samples consumed (written or skipped), i.e. the index to continue from.
        label_counts: written samples per class.
        skipped: ``[path, reason]`` of the samples that failed to convert, in order.
        files: per format, ``{partial file (relative to the dataset dir): size}``.
        dali_shards: the closed DALI shards (``ShardWriter`` entries), when DALI is written.
    """
    split: str
    fingerprint: dict
    done: int
    label_counts: list
    skipped: list
    files: dict
    dali_shards: Optional[list] = None

    def save(self, out_dir: str) -> None:
        write_json_atomic({"version": VERSION, **asdict(self)}, checkpoint_path(out_dir, self.split))

    @classmethod
    def load(cls, out_dir: str, split: str) -> Optional["SplitCheckpoint"]:
        """The split's checkpoint, or None when there is none (or none this version can read)."""
        try:
            with open(checkpoint_path(out_dir, split)) as f:
                d = json.load(f)
            if d.pop("version") != VERSION:
                return None
            return cls(**d)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def all_files(self) -> set:
        return {rel for per_format in self.files.values() for rel in per_format}

    def why_not_usable(self, out_dir: str, want: dict, formats: list) -> Optional[str]:
        """None when a pass writing ``formats`` with fingerprint ``want`` can continue from here, else the reason."""
        changed = [k for k in want if self.fingerprint.get(k) != want[k]]
        if changed:
            names = {"samples": "number of samples", "samples_sha256": "samples (paths, labels)",
                     "image_policy": "image settings", "shard_size": "--shard-size"}
            return f"the {', '.join(names[k] for k in changed)} changed since it was made"
        missing = [f for f in formats if f not in self.files]
        if missing:
            return f"it has no {', '.join(missing)} output"
        for fmt in formats:
            for rel, size in self.files[fmt].items():
                path = os.path.join(out_dir, rel)
                if not os.path.isfile(path) or os.path.getsize(path) < size:
                    return f"{rel} is missing or shorter than the checkpoint recorded"
        return None

    def keep_only(self, out_dir: str, formats: list) -> None:
        """Delete the partial files of formats not in ``formats``, and cut the rest back to the recorded sizes."""
        for fmt in list(self.files):
            if fmt in formats:
                for rel, size in self.files[fmt].items():
                    os.truncate(os.path.join(out_dir, rel), size)
            else:
                _remove(out_dir, self.files.pop(fmt))
        if "dali" not in formats:
            self.dali_shards = None

    def discard(self, out_dir: str) -> None:
        """Delete the checkpoint and its partial files."""
        _remove(out_dir, self.all_files())
        _remove(out_dir, [os.path.relpath(checkpoint_path(out_dir, self.split), out_dir)])


class CheckpointWriter:
    """Saves a pass's checkpoints on a background thread, one at a time: fsync the files that changed since the
    last one, then write the JSON. The pass goes on writing meanwhile: waiting for the disk (seconds per ImageNet
    shard of raw FFCV records) would stall the one process that feeds both writers."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self._synced = {}  # relative path -> size when last fsynced
        self._thread = None
        self._error = None

    def save(self, ckpt: SplitCheckpoint) -> None:
        """Start saving ``ckpt`` (after the previous save has finished); its files must be flushed to the OS."""
        self.wait()
        self._thread = threading.Thread(target=self._save, args=(ckpt,), name="neatt-checkpoint", daemon=True)
        self._thread.start()

    def _save(self, ckpt: SplitCheckpoint) -> None:
        try:
            for per_format in ckpt.files.values():
                for rel, size in per_format.items():
                    if self._synced.get(rel) != size:
                        _fsync(os.path.join(self.out_dir, rel))
                        self._synced[rel] = size
            ckpt.save(self.out_dir)
        except BaseException as e:  # raised in the pass's thread by wait()
            self._error = e

    def wait(self) -> None:
        """Wait for the save in progress; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # e.g. ENOSPC, EIO: name the file
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)


def drop_checkpoint(out_dir: str, split: str) -> None:
    """Delete the split's checkpoint file and the partial files it lists, if there is one (readable or not)."""
    ckpt = SplitCheckpoint.load(out_dir, split)
    if ckpt is not None:
        ckpt.discard(out_dir)
    elif os.path.isfile(checkpoint_path(out_dir, split)):
        os.remove(checkpoint_path(out_dir, split))


def checkpointed_files(out_dir: str) -> set:
    """Relative paths of the partial files that the checkpoints in ``out_dir`` list."""
    files = set()
    for path in glob.glob(checkpoint_path(out_dir, "*")):
        ckpt = SplitCheckpoint.load(out_dir, os.path.basename(path)[:-len(SUFFIX)])
        files |= ckpt.all_files() if ckpt is not None else set()
    return files


def _remove(out_dir: str, rel_paths) -> None:
    for rel in rel_paths:
        p = os.path.join(out_dir, rel)
        if os.path.isfile(p):
            os.remove(p)
