"""Dataset readers: each turns a source on disk (or embedded data) into classes and per-split sample lists.

A sample is ``(item, label)`` where ``item`` is a file path, a file inside an uncompressed tar
(:class:`~neatt.datasets.tar_index.TarMember`) or a uint8 (H, W, 3) array, and ``label`` indexes ``classes``.
Lists are sorted (by path for file trees) so that the same input gives the same order on any machine.
A missing or misstructured source raises :class:`SourceError` whose message shows the expected layout.
"""
from __future__ import annotations

import csv
import io
import os
import pickle
import re
import tarfile
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

import numpy as np

from .tar_index import ArchiveError, TarMember, index_tar, index_tar_of_tars, read_small_member

__all__ = ["SourceError", "DatasetSource", "Sample", "imagenet_source", "cifar_source", "folder_source",
           "digits_source", "render_digits", "DATASETS"]

Sample = tuple  # (item: str | TarMember | np.ndarray, label: int)


class SourceError(Exception):
    """The source is missing or not laid out as expected; ``str(e)`` names the path and the expected layout."""


@dataclass
class DatasetSource:
    """What a reader found: class names in index order, samples per split, and labelling problems to report.

    ``skipped`` holds ``(split, path, reason)`` for inputs dropped before decoding (e.g. a flat val image with no
    label); ``source`` is the absolute source path that reported paths are relative to (``None`` for embedded data).
    """
    name: str
    classes: list
    splits: dict
    source: Optional[str]
    skipped: list = field(default_factory=list)

    def relpath(self, item: Union[str, TarMember, np.ndarray], index: int, split: str) -> str:
        if isinstance(item, TarMember) and self.source:
            return f"{os.path.relpath(item.archive, self.source)}/{item.name}"
        if isinstance(item, str) and self.source:
            return os.path.relpath(item, self.source)
        return f"{split}[{index}]"


IMAGENET_LAYOUT = """expected the ILSVRC2012 layout:
  <src>/train/<wnid>/*.JPEG                      (e.g. train/n01440764/n01440764_10026.JPEG)
  <src>/val/<wnid>/*.JPEG                        (val in class folders), or
  <src>/val/ILSVRC2012_val_00000001.JPEG ...     (flat val) with its labels in one of
      <src>/LOC_val_solution.csv                 (Kaggle: ImageId,PredictionString)
      <src>/ILSVRC2012_validation_ground_truth.txt + the devkit's class order
          (<src>/ILSVRC2012_devkit_t12/data/meta.mat, or --wnid-order FILE with one wnid per line)
  (the Kaggle tree <src>/ILSVRC/Data/CLS-LOC/{train,val} is found too; --val-labels/--devkit point elsewhere)
  or the archives as image-net.org ships them, read without extracting them (where train/ or val/ is absent):
  <src>/ILSVRC2012_img_train.tar                 (one <wnid>.tar per class inside)
  <src>/ILSVRC2012_img_val.tar                   (flat val) + <src>/ILSVRC2012_devkit_t12.tar.gz (its labels)"""

TRAIN_TAR, VAL_TAR, DEVKIT_TGZ = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
_DEVKIT_GT, _DEVKIT_META = "data/ILSVRC2012_validation_ground_truth.txt", "data/meta.mat"
# image-net.org's checksums (as torchvision's ImageNet dataset checks them), for the message on a damaged archive
_MD5 = {TRAIN_TAR: "1d675b47d978889d74fa0da5fadfb00e", VAL_TAR: "29b22e2961454d5413ddabcf34fc5622",
        DEVKIT_TGZ: "fa75699e90414af021442c21a62c3abf"}


def _archive_error(e: ArchiveError, path: str) -> SourceError:
    md5 = _MD5.get(os.path.basename(path))
    check = f" (image-net.org's md5 of it: {md5})" if md5 else ""
    return SourceError(f"{e}.\nCheck the download{check} and download it again if it differs.")


FOLDER_LAYOUT = """expected an ImageFolder tree:
  <src>/<split>/<class>/<image>   (e.g. <src>/train/cat/001.jpg, <src>/val/cat/101.jpg)"""


def _listdir(path: str) -> list:
    return sorted(os.listdir(path))


def _class_tree(split_dir: str) -> dict:
    """{class name: sorted file paths} for a ``<split>/<class>/<file>`` tree; every entry in a class folder is a
    candidate (non-images are reported by the decoder, not hidden)."""
    tree = {}
    for cls in _listdir(split_dir):
        d = os.path.join(split_dir, cls)
        if os.path.isdir(d) and not cls.startswith("."):
            tree[cls] = [os.path.join(d, f) for f in _listdir(d)]
    return tree


def _samples_from_tree(tree: dict, class_index: dict) -> list:
    return [(path, class_index[cls]) for cls in sorted(tree) for path in tree[cls]]


# --------------------------------------------------------------------------------------------------- ImageNet
def _read_loc_val_solution(path: str) -> dict:
    """Kaggle's LOC_val_solution.csv: ``ImageId,PredictionString`` where the string starts with the wnid."""
    labels = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise SourceError(f"{path}: expected the header 'ImageId,PredictionString', got {header}")
        for row in reader:
            if len(row) >= 2 and row[1].strip():
                labels[row[0].strip()] = row[1].split()[0]
    return labels


def _is_devkit_archive(path: Optional[str]) -> bool:
    return bool(path) and path.endswith((".tar.gz", ".tgz", ".tar"))


def _read_devkit_member(devkit_archive: str, suffix: str) -> bytes:
    try:
        return read_small_member(devkit_archive, suffix)
    except ArchiveError as e:
        raise _archive_error(e, devkit_archive) from None


def _read_devkit_order(devkit: Optional[str], wnid_order: Optional[str]) -> list:
    """Wnids in the devkit's ILSVRC2012_ID order (index 0 = ID 1), from a text file or the devkit's meta.mat (in
    its folder, given itself, or inside the devkit's archive)."""
    if wnid_order:
        with open(wnid_order) as f:
            wnids = [line.split()[0] for line in f if line.strip()]
        if not wnids:
            raise SourceError(f"--wnid-order {wnid_order}: empty; expected one wnid per line in devkit order")
        return wnids
    if _is_devkit_archive(devkit) and os.path.isfile(devkit):
        meta = io.BytesIO(_read_devkit_member(devkit, _DEVKIT_META))
    else:
        meta = devkit if devkit and devkit.endswith(".mat") else os.path.join(devkit or "", "data", "meta.mat")
        if not os.path.isfile(meta):
            raise SourceError(f"flat val with ILSVRC2012_validation_ground_truth.txt needs the devkit's class order: "
                              f"{meta} not found; pass --devkit DIR (ILSVRC2012_devkit_t12, or its .tar.gz) or "
                              f"--wnid-order FILE")
    from scipy.io import loadmat
    syn = loadmat(meta, squeeze_me=True)["synsets"]
    ids = np.asarray(syn["ILSVRC2012_ID"], dtype=np.int64)
    wnids = [str(w) for w in syn["WNID"]]
    order = {int(i): w for i, w in zip(ids, wnids)}
    n = 1
    while n in order and n <= 1000:
        n += 1
    return [order[i] for i in range(1, n)]


def _flat_val_labels(root: str, val_dir: str, val_labels: Optional[str], devkit: Optional[str],
                     wnid_order: Optional[str]) -> dict:
    """{val file name (no extension): wnid} from LOC_val_solution.csv, or the ground-truth txt + devkit order (both
    may come from the devkit's archive)."""
    candidates = [val_labels] if val_labels else [
        os.path.join(d, n) for d in (root, os.path.dirname(root))
        for n in ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt",
                  os.path.join("ILSVRC2012_devkit_t12", "data", "ILSVRC2012_validation_ground_truth.txt"),
                  DEVKIT_TGZ)]
    found = next((c for c in candidates if c and os.path.isfile(c)), None)
    if found is None:
        where = val_labels or " or ".join(candidates[:4])
        raise SourceError(f"{val_dir} is a flat set of images but no labels file was found ({where}).\n"
                          f"{IMAGENET_LAYOUT}")
    if found.endswith(".csv"):
        return _read_loc_val_solution(found)
    if _is_devkit_archive(found):
        text = _read_devkit_member(found, _DEVKIT_GT).decode()
        devkit = devkit or found
    else:
        with open(found) as f:
            text = f.read()
        if devkit is None and not wnid_order:
            gt_dir = os.path.dirname(found)
            guess = [os.path.join(root, "ILSVRC2012_devkit_t12"), os.path.dirname(gt_dir)]
            devkit = next((g for g in guess if os.path.isfile(os.path.join(g, "data", "meta.mat"))), guess[0])
    order = _read_devkit_order(devkit, wnid_order)
    ids = [int(line) for line in text.splitlines() if line.strip()]
    bad = [i for i in ids if not 1 <= i <= len(order)]
    if bad:
        raise SourceError(f"{found}: ILSVRC2012_ID {bad[0]} is outside the class order's 1..{len(order)}")
    return {f"ILSVRC2012_val_{k + 1:08d}": order[i - 1] for k, i in enumerate(ids)}


def _train_classes(train_dir: str, train_tar: str, ds_skipped: list):
    """({wnid: sorted images}, where they came from) from the train/ tree or, without one, from
    ILSVRC2012_img_train.tar; members of the archive that are not images go to ``ds_skipped``."""
    if os.path.isdir(train_dir):
        return _class_tree(train_dir), train_dir
    if not os.path.isfile(train_tar):
        raise SourceError(f"neither {train_dir} nor {train_tar} was found (the class list comes from it).\n"
                          f"{IMAGENET_LAYOUT}")
    try:
        classes, others = index_tar_of_tars(train_tar)
    except ArchiveError as e:
        raise _archive_error(e, train_tar) from None
    ds_skipped += [("train", f"{TRAIN_TAR}/{name}", reason) for name, reason in others]
    return classes, train_tar


def _flat_val_entries(val_dir: str, names: list, val_tar: str):
    """([(file name, item)], where they came from) of a flat val: the files ``names`` of val/ when it exists, else
    the members of ILSVRC2012_img_val.tar (None for a member that is not a regular file)."""
    if os.path.isdir(val_dir):
        return [(name, os.path.join(val_dir, name)) for name in names], val_dir
    try:
        files, others = index_tar(val_tar)
    except ArchiveError as e:
        raise _archive_error(e, val_tar) from None
    return [(os.path.basename(m.name), m) for m in files] + [(name, None) for name, _ in others], val_tar


def imagenet_source(src: str, splits=("train", "val"), val_labels: Optional[str] = None,
                    devkit: Optional[str] = None, wnid_order: Optional[str] = None) -> DatasetSource:
    """ILSVRC2012: classes are the sorted wnids of ``train/`` (torchvision ImageFolder's and timm's order), or of
    the class archives in ILSVRC2012_img_train.tar."""
    root = os.path.abspath(src)
    kaggle = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    data_root = kaggle if not os.path.isdir(os.path.join(root, "train")) and os.path.isdir(kaggle) else root
    train_dir, val_dir = os.path.join(data_root, "train"), os.path.join(data_root, "val")
    ds = DatasetSource("imagenet", [], {}, root)
    train_tree, train_from = _train_classes(train_dir, os.path.join(root, TRAIN_TAR), ds.skipped)
    bad = [c for c in train_tree if not re.fullmatch(r"n\d{8}", c)]
    if not train_tree or bad:
        what = f"classes that are not wnids: {bad[:3]}" if bad else "no classes"
        raise SourceError(f"{train_from}: {what}.\n{IMAGENET_LAYOUT}")
    ds.classes = classes = sorted(train_tree)
    index = {c: i for i, c in enumerate(classes)}
    if "train" in splits:
        ds.splits["train"] = _samples_from_tree(train_tree, index)
    if "val" in splits:
        val_tar = os.path.join(root, VAL_TAR)
        if not os.path.isdir(val_dir) and not os.path.isfile(val_tar):
            raise SourceError(f"neither {val_dir} nor {val_tar} was found.\n{IMAGENET_LAYOUT}")
        entries = _listdir(val_dir) if os.path.isdir(val_dir) else []
        subdirs = [e for e in entries if os.path.isdir(os.path.join(val_dir, e)) and re.fullmatch(r"n\d{8}", e)]
        if subdirs:
            tree = _class_tree(val_dir)
            unknown = sorted(set(tree) - set(index))
            if unknown:
                raise SourceError(f"{val_dir}: class folders {unknown[:3]} have no train/ counterpart.\n"
                                  f"{IMAGENET_LAYOUT}")
            ds.splits["val"] = _samples_from_tree(tree, index)
        else:
            val_entries, val_from = _flat_val_entries(val_dir, entries, val_tar)
            labels = _flat_val_labels(root, val_from, val_labels, devkit, wnid_order)
            samples = []
            for name, item in val_entries:
                wnid = labels.get(name.split(".")[0])
                where = ds.relpath(item, 0, "val") if item is not None else f"{VAL_TAR}/{name}"
                if wnid is None:
                    ds.skipped.append(("val", where, "no label for this file in the val labels file"))
                elif item is None:
                    ds.skipped.append(("val", where, "not a regular file in the archive"))
                elif wnid not in index:
                    raise SourceError(f"val label {wnid} (for {name}) is not a class of {train_from}")
                else:
                    samples.append((item, index[wnid]))
            ds.splits["val"] = samples
    return ds


# --------------------------------------------------------------------------------------------------- CIFAR
class CifarRelease(NamedTuple):
    """One of the official CIFAR python releases (www.cs.toronto.edu/~kriz/cifar.html): pickled dicts with bytes
    keys, ``b'data'`` uint8 (N, 3072), each row the R, G, B planes of a 32x32 image."""
    title: str
    archive: str  # the download
    folder: str  # what it extracts to
    train: tuple  # pickles of the train split, concatenated in this order
    test: str  # the test set's pickle: the val split
    meta: str
    names_key: bytes  # class names in meta
    labels_key: bytes

    @property
    def layout(self) -> str:
        return (f"expected the official {self.title} python release:\n  <src> = {self.archive}, or a folder holding "
                f"it, or the extracted folder {self.folder}\n  with the pickles {', '.join(self.train)}, {self.test}, "
                f"{self.meta} (keys b'data', {self.labels_key!r}, {self.names_key!r})")


CIFAR_RELEASES = {
    "cifar10": CifarRelease("CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                            b"label_names", b"labels"),
    "cifar100": CifarRelease("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta",
                             b"fine_label_names", b"fine_labels"),
}


def _cifar_pickles(src: str, release: CifarRelease) -> dict:
    """{pickle name: unpickled dict with bytes keys} from the tar.gz or an extracted folder."""
    names = (*release.train, release.test, release.meta)
    path = os.path.abspath(src)
    if os.path.isdir(path):
        for d in (path, os.path.join(path, release.folder)):
            if all(os.path.isfile(os.path.join(d, n)) for n in names):
                out = {}
                for n in names:
                    with open(os.path.join(d, n), "rb") as f:
                        out[n] = pickle.load(f, encoding="bytes")
                return out
        path = os.path.join(path, release.archive)
    if not os.path.isfile(path):
        raise SourceError(f"{src}: no {release.title} release found.\n{release.layout}")
    out = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf.getmembers():
                base = os.path.basename(m.name)
                if m.isfile() and base in names:
                    out[base] = pickle.load(tf.extractfile(m), encoding="bytes")
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise SourceError(f"{path}: cannot read the archive ({e}).\n{release.layout}") from None
    if set(out) != set(names):
        raise SourceError(f"{path}: missing {sorted(set(names) - set(out))} in the archive.\n{release.layout}")
    return out


def cifar_source(dataset: str, src: str, splits=("train", "val")) -> DatasetSource:
    """CIFAR-10 or CIFAR-100 (``dataset``; CIFAR-100's fine labels); ``val`` is the official test set."""
    release = CIFAR_RELEASES[dataset]
    p = _cifar_pickles(src, release)
    try:
        classes = [c.decode() for c in p[release.meta][release.names_key]]
        ds = DatasetSource(dataset, classes, {}, os.path.abspath(src))
        for split, names in (("train", release.train), ("val", (release.test,))):
            if split not in splits:
                continue
            data = np.concatenate([np.asarray(p[n][b"data"], dtype=np.uint8) for n in names])
            data = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = [int(v) for n in names for v in p[n][release.labels_key]]
            if len(labels) != len(data):
                raise SourceError(f"{src}: {split} has {len(data)} images but {len(labels)} labels")
            ds.splits[split] = [(np.ascontiguousarray(img), lab) for img, lab in zip(data, labels)]
    except (KeyError, ValueError) as e:
        raise SourceError(f"{src}: unexpected pickle content ({e!r}).\n{release.layout}") from None
    return ds


# --------------------------------------------------------------------------------------------------- folder
def folder_source(src: str, splits=("train", "val")) -> DatasetSource:
    """Any ``<split>/<class>/<image>`` tree; classes are the sorted union of class folders over the splits."""
    root = os.path.abspath(src)
    if not os.path.isdir(root):
        raise SourceError(f"{src} not found.\n{FOLDER_LAYOUT}")
    trees = {}
    for split in splits:
        d = os.path.join(root, split)
        if not os.path.isdir(d):
            raise SourceError(f"{d} not found (split {split!r}; choose splits with --splits).\n{FOLDER_LAYOUT}")
        trees[split] = _class_tree(d)
        if not trees[split]:
            raise SourceError(f"{d}: no class folders.\n{FOLDER_LAYOUT}")
    classes = sorted(set().union(*trees.values()))
    index = {c: i for i, c in enumerate(classes)}
    return DatasetSource("folder", classes, {s: _samples_from_tree(t, index) for s, t in trees.items()}, root)


# --------------------------------------------------------------------------------------------------- digits
def render_digits(images8: np.ndarray, size: int = 32, seed: int = 0) -> np.ndarray:
    """sklearn digits (N, 8, 8) in 0..16 -> (N, size, size, 3) uint8 RGB: bicubic upsampling of the intensity, then a
    per-image foreground/background colour pair drawn from a fixed seed (independent of the label), so the demo is
    a real colour task and the same on every machine."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    n = len(images8)
    bg = rng.uniform(0, 110, size=(n, 3))
    fg = rng.uniform(150, 255, size=(n, 3))
    out = np.empty((n, size, size, 3), np.uint8)
    for i, im in enumerate(images8):
        t = Image.fromarray((im / 16.0).astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
        t = np.clip(np.asarray(t), 0.0, 1.0)[..., None]
        out[i] = np.rint(bg[i] + (fg[i] - bg[i]) * t).astype(np.uint8)
    return out


def digits_source(splits=("train", "val"), val_fraction: float = 0.2, seed: int = 0) -> DatasetSource:
    """The embedded demo: scikit-learn's 1797 digits at 32x32 RGB; stratified 80/20 split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    rgb = render_digits(d.images)
    idx = np.arange(len(d.target))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=d.target, random_state=seed)
    parts = {"train": np.sort(train_idx), "val": np.sort(val_idx)}
    ds = DatasetSource("digits", [str(c) for c in range(10)], {}, None)
    for split in splits:
        if split not in parts:
            raise SourceError(f"digits has the splits train and val, not {split!r}")
        ds.splits[split] = [(rgb[i], int(d.target[i])) for i in parts[split]]
    return ds


DATASETS = ("imagenet", *CIFAR_RELEASES, "folder", "digits")
