"""Small datasets in the real on-disk formats, built from photos that packages ship, and readers for converted ones.

Builders (for conversion, loader and trainer tests):

* :func:`photo_tiles` - real photo crops (scikit-learn's china/flower, scikit-image's astronaut/coffee/chelsea).
* :func:`make_imagenet_tree` - ``train/<wnid>/*.JPEG`` plus a val in class folders or flat with
  ``LOC_val_solution.csv`` or ``ILSVRC2012_validation_ground_truth.txt`` + devkit ``meta.mat``; optionally every
  kind of bad file real ImageNet-like trees contain. Returns the expected result, computed independently of neatt.
* :func:`pack_imagenet_archives` - such a tree packed as image-net.org ships it: ``ILSVRC2012_img_train.tar``
  (a tar of per-class tars), ``ILSVRC2012_img_val.tar``, ``ILSVRC2012_devkit_t12.tar.gz``.
* :func:`make_cifar_release` - the CIFAR-100 or CIFAR-10 pickles exactly like the official releases, optionally
  packed as their ``.tar.gz``.
* :func:`make_folder_tree` - a plain ImageFolder tree.

Readers (each uses the library's own reader, CPU only): :func:`read_ffcv` (FFCV ``Loader``),
:func:`read_ffcv_jpegs` (FFCV ``Reader``: the stored JPEG bytes) and :func:`read_dali` (DALI
``fn.readers.webdataset`` + ``fn.decoders.image``).
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = ["CIFAR10_CLASSES", "CIFAR100_CLASSES", "photo_tiles", "Expected", "make_imagenet_tree", "make_cifar_release",
           "make_folder_tree", "pack_imagenet_archives", "read_ffcv", "read_ffcv_jpegs", "read_dali", "run_convert_cli", "BAD_SKIPPED",
           "BAD_CONVERTED"]

CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()

# Bad inputs make_imagenet_tree(bad_cases=True) puts in the first train class: file name suffix -> what must happen.
BAD_SKIPPED = ("truncated.JPEG", "empty.JPEG", "notes.txt", "folder.JPEG", "broken_link.JPEG")
BAD_CONVERTED = ("cmyk.JPEG", "gray.JPEG", "palette_png.JPEG", "rgb_png.JPEG", "gray16.png", "rgba.png")

_photos = None


def _photos_list():
    global _photos
    if _photos is None:
        import skimage.data
        from sklearn.datasets import load_sample_images
        _photos = list(load_sample_images().images) + [skimage.data.astronaut(), skimage.data.coffee(),
                                                        skimage.data.chelsea()]
    return _photos


def photo_tiles(n: int, size=(32, 40), seed: int = 0) -> np.ndarray:
    """``n`` uint8 RGB tiles of ``size`` (h, w): random crops (fixed seed) of real photos, shrunk 4x with PIL's box
    filter so they look like small photos rather than blurry zooms."""
    rng = np.random.default_rng(seed)
    photos = _photos_list()
    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        y, x = rng.integers(0, p.shape[0] - 4 * h + 1), rng.integers(0, p.shape[1] - 4 * w + 1)
        crop = Image.fromarray(p[y:y + 4 * h, x:x + 4 * w])
        out[i] = np.asarray(crop.resize((w, h), Image.BOX))
    return out


@dataclass
class Expected:
    """What a correct conversion of a built tree holds, derived with PIL/numpy only.

    ``splits[split]`` lists ``(relative path, label, expected RGB uint8 array at the stored size)`` in the sample
    order the contract prescribes (class index, then file name); ``skipped[split]`` the relative paths that must be
    reported as skipped.
    """
    classes: list
    splits: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)


def _save(path, img: Image.Image, fmt: str, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format=fmt, **kw)


def _decode_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _write_bad_cases(d: str, prefix: str, tile: np.ndarray) -> dict:
    """Write every bad input into class folder ``d``; return {file name: expected RGB or None (must be skipped)}."""
    exp = {}
    rgb = Image.fromarray(tile)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=95)
    jpeg = buf.getvalue()
    with open(os.path.join(d, prefix + "truncated.JPEG"), "wb") as f:
        f.write(jpeg[: len(jpeg) * 6 // 10])
    open(os.path.join(d, prefix + "empty.JPEG"), "wb").close()
    with open(os.path.join(d, prefix + "notes.txt"), "w") as f:
        f.write("annotations exported by some tool\n")
    os.makedirs(os.path.join(d, prefix + "folder.JPEG"))
    os.symlink(os.path.join(d, "does-not-exist.JPEG"), os.path.join(d, prefix + "broken_link.JPEG"))
    exp.update({prefix + n: None for n in BAD_SKIPPED})

    p = os.path.join(d, prefix + "cmyk.JPEG")
    _save(p, rgb.convert("CMYK"), "JPEG", quality=95)
    exp[prefix + "cmyk.JPEG"] = _decode_rgb(p)
    p = os.path.join(d, prefix + "gray.JPEG")
    _save(p, rgb.convert("L"), "JPEG", quality=95)
    exp[prefix + "gray.JPEG"] = np.repeat(np.asarray(Image.open(p))[..., None], 3, axis=2)
    p = os.path.join(d, prefix + "palette_png.JPEG")
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=64)
    _save(p, pal, "PNG")
    exp[prefix + "palette_png.JPEG"] = np.asarray(pal.convert("RGB"))
    _save(os.path.join(d, prefix + "rgb_png.JPEG"), rgb, "PNG")
    exp[prefix + "rgb_png.JPEG"] = tile
    gray16 = np.asarray(rgb.convert("L")).astype(np.uint16) * 257 + 100   # uses the low byte too
    _save(os.path.join(d, prefix + "gray16.png"), Image.fromarray(gray16), "PNG")
    exp[prefix + "gray16.png"] = np.repeat(np.rint(gray16 / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    h, w = tile.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))          # transparent left, opaque right
    _save(os.path.join(d, prefix + "rgba.png"), Image.fromarray(np.dstack([tile, alpha])), "PNG")
    a = alpha[..., None] / 255.0
    exp[prefix + "rgba.png"] = np.rint(tile * a + 255.0 * (1 - a)).astype(np.uint8)
    return exp


def _write_meta_mat(path: str, devkit_wnids: list):
    """The devkit's data/meta.mat: a ``synsets`` struct array; IDs 1..N are the leaf classes in devkit order,
    followed by a non-leaf synset like the real file has."""
    from scipy.io import savemat
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(i + 1, w, f"class {w}", 0) for i, w in enumerate(devkit_wnids)]
    rows.append((len(devkit_wnids) + 1, "n99999999", "entity", len(devkit_wnids)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    savemat(path, {"synsets": np.array(rows, dtype=dt).reshape(-1, 1)})


def make_imagenet_tree(root: str, num_classes: int = 3, per_class: int = 3, val_per_class: int = 2,
                       size=(32, 40), val_layout: str = "folders", bad_cases: bool = True,
                       large_class: bool = True, seed: int = 0) -> Expected:
    """An ILSVRC2012-style tree under ``root`` with real photo tiles saved as quality-95 JPEGs.

    Args:
        val_layout: ``folders`` (val/<wnid>/...), ``loc_csv`` (flat val + LOC_val_solution.csv, one image left
            without a label), or ``ground_truth`` (flat val + ILSVRC2012_devkit_t12 with the ground-truth txt and a
            meta.mat whose class order is the reverse of the sorted wnids, plus ``devkit_wnids.txt`` in that order).
        bad_cases: put :data:`BAD_SKIPPED` and :data:`BAD_CONVERTED` files into the first train class.
        large_class: the last class holds images twice ``size``; a conversion at ``max_resolution = max(size)``
            must shrink them 2x (expected: PIL's box filter, i.e. 2x2 averages).
    Returns: the :class:`Expected` result at ``max_resolution = max(size)``.
    """
    assert val_layout in ("folders", "loc_csv", "ground_truth")
    wnids = [f"n{1440764 + 7919 * k:08d}" for k in range(num_classes)]
    classes = sorted(wnids)
    exp = Expected(classes)
    h, w = size
    tiles = photo_tiles(num_classes * (per_class + val_per_class) + 1, (2 * h, 2 * w), seed)
    k = 0
    val_items = []  # (wnid, tile)
    train = []
    for ci, wnid in enumerate(classes):
        big = large_class and ci == num_classes - 1
        d = os.path.join(root, "train", wnid)
        os.makedirs(d, exist_ok=True)
        for j in range(per_class + val_per_class):
            t2 = Image.fromarray(tiles[k])
            k += 1
            img = t2 if big else t2.resize((w, h), Image.BOX)
            if j >= per_class:
                val_items.append((ci, img, big))
                continue
            p = os.path.join(d, f"{wnid}_{j + 1:05d}.JPEG")
            _save(p, img, "JPEG", quality=95)
            rgb = _decode_rgb(p)
            if big:
                rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BOX))
            train.append((os.path.relpath(p, root), ci, rgb))
    exp.skipped["train"] = []
    if bad_cases:
        d = os.path.join(root, "train", classes[0])
        for name, rgb in _write_bad_cases(d, f"{classes[0]}_", np.asarray(Image.fromarray(tiles[k]).resize(
                (w, h), Image.BOX))).items():
            rel = os.path.join("train", classes[0], name)
            if rgb is None:
                exp.skipped["train"].append(rel)
            else:
                train.append((rel, 0, rgb))
    exp.splits["train"] = sorted(train, key=lambda s: (s[1], s[0]))

    val, exp.skipped["val"] = [], []
    flat = val_layout != "folders"
    for v, (ci, img, big) in enumerate(val_items):
        name = f"ILSVRC2012_val_{v + 1:08d}.JPEG"
        p = os.path.join(root, "val", *([] if flat else [classes[ci]]), name)
        _save(p, img, "JPEG", quality=95)
        rgb = _decode_rgb(p)
        if big:
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BOX))
        val.append((os.path.relpath(p, root), ci, rgb))
    if val_layout == "loc_csv":
        unlabeled = val.pop(len(val) // 2)
        exp.skipped["val"].append(unlabeled[0])
        rows = [(os.path.basename(r)[:-5], classes[ci]) for r, ci, _ in val]
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]  # the real file is unsorted
        with open(os.path.join(root, "LOC_val_solution.csv"), "w") as f:
            f.write("ImageId,PredictionString\n")
            for img_id, wnid in rows:
                f.write(f"{img_id},{wnid} 10 12 30 28 {wnid} 1 2 5 6\n")
    elif val_layout == "ground_truth":
        devkit_order = classes[::-1]
        data = os.path.join(root, "ILSVRC2012_devkit_t12", "data")
        _write_meta_mat(os.path.join(data, "meta.mat"), devkit_order)
        with open(os.path.join(data, "ILSVRC2012_validation_ground_truth.txt"), "w") as f:
            for _, ci, _ in val:
                f.write(f"{devkit_order.index(classes[ci]) + 1}\n")
        with open(os.path.join(root, "devkit_wnids.txt"), "w") as f:
            f.write("\n".join(devkit_order) + "\n")
    exp.splits["val"] = sorted(val, key=lambda s: (s[1], s[0])) if not flat else sorted(val, key=lambda s: s[0])
    return exp


def _tar_bytes(folder: str, names: list) -> bytes:
    """An uncompressed tar of ``folder``'s entries ``names`` as they are (a directory or a link stays one)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            tar.add(os.path.join(folder, name), arcname=name, recursive=False)
    return buf.getvalue()


def pack_imagenet_archives(tree: str, out: str) -> None:
    """Pack a :func:`make_imagenet_tree` tree with ``val_layout="ground_truth"`` into ``out`` as image-net.org
    ships ILSVRC2012: the train tar holds one ``<wnid>.tar`` per class, the val tar the flat val images, the devkit
    archive its ``data/`` files. Members go in reverse name order, so that a reader must sort them itself."""
    os.makedirs(out, exist_ok=True)
    train = os.path.join(tree, "train")
    with tarfile.open(os.path.join(out, "ILSVRC2012_img_train.tar"), "w") as outer:
        for wnid in sorted(os.listdir(train), reverse=True):
            data = _tar_bytes(os.path.join(train, wnid), sorted(os.listdir(os.path.join(train, wnid)), reverse=True))
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(data)
            outer.addfile(info, io.BytesIO(data))
    val = os.path.join(tree, "val")
    with open(os.path.join(out, "ILSVRC2012_img_val.tar"), "wb") as f:
        f.write(_tar_bytes(val, sorted(os.listdir(val), reverse=True)))
    with tarfile.open(os.path.join(out, "ILSVRC2012_devkit_t12.tar.gz"), "w:gz") as tar:
        tar.add(os.path.join(tree, "ILSVRC2012_devkit_t12"), arcname="ILSVRC2012_devkit_t12")


def make_cifar_release(root: str, dataset: str = "cifar100", train_per_class: int = 1, test_per_class: int = 1,
                       archive: bool = True, seed: int = 0) -> str:
    """An official CIFAR python release with real photo tiles, as https://www.cs.toronto.edu/~kriz/cifar.html
    ships it: pickled dicts with bytes keys, ``b'data'`` uint8 (N, 3072), each row the R, G, B planes of a 32x32
    image. CIFAR-100: ``cifar-100-python/{train,test,meta}`` with fine and coarse labels; CIFAR-10:
    ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``, the train tiles cut into the five batches in
    order. Packed into its ``.tar.gz`` when ``archive``. Returns the path to pass as ``--src``.

    Labels cycle through the classes (image ``i`` of a split has label ``i % number of classes``); the train tiles
    are ``photo_tiles(n, (32, 32), seed)``, the test tiles the same with ``seed + 1``."""
    classes = CIFAR100_CLASSES if dataset == "cifar100" else CIFAR10_CLASSES
    k = len(classes)
    folder = os.path.join(root, "cifar-100-python" if dataset == "cifar100" else "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def dump(name, d):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=2)

    for split, per, split_seed in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        n = k * per
        tiles = photo_tiles(n, (32, 32), split_seed)
        labels = [i % k for i in range(n)]
        data = tiles.transpose(0, 3, 1, 2).reshape(n, 3072)
        if dataset == "cifar100":
            dump(split, {b"filenames": [f"tile_{i:05d}.png".encode() for i in range(n)], b"batch_label": split.encode(),
                         b"fine_labels": labels, b"coarse_labels": [f // 5 for f in labels], b"data": data.copy()})
            continue
        names = [f"data_batch_{b}" for b in range(1, 6)] if split == "train" else ["test_batch"]
        for name, part in zip(names, np.array_split(np.arange(n), len(names))):
            dump(name, {b"batch_label": name.encode(), b"labels": [labels[i] for i in part],
                        b"data": data[part].copy(), b"filenames": [f"tile_{i:05d}.png".encode() for i in part]})
    if dataset == "cifar100":
        dump("meta", {b"fine_label_names": [c.encode() for c in classes],
                      b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    else:
        dump("batches.meta", {b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": 10000,
                              b"num_vis": 3072})
    if not archive:
        return folder
    path = os.path.join(root, ("cifar-100-python" if dataset == "cifar100" else "cifar-10-python") + ".tar.gz")
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=os.path.basename(folder))
    return path


def make_folder_tree(root: str, classes=("cat", "dog"), splits=("train", "val"), per_class: int = 2,
                     size=(32, 40), seed: int = 0) -> Expected:
    """``<root>/<split>/<class>/<nnn>.png`` (lossless) of photo tiles; returns the expected result."""
    exp = Expected(sorted(classes))
    tiles = photo_tiles(len(classes) * len(splits) * per_class, size, seed)
    k = 0
    for split in splits:
        rows = []
        for ci, cls in enumerate(exp.classes):
            for j in range(per_class):
                p = os.path.join(root, split, cls, f"{j:03d}.png")
                _save(p, Image.fromarray(tiles[k]), "PNG")
                rows.append((os.path.relpath(p, root), ci, tiles[k]))
                k += 1
        exp.splits[split], exp.skipped[split] = rows, []
    return exp


def read_ffcv(beton: str, batch_size: int = 64):
    """All records of a .beton in order, with FFCV's Loader (CPU): (uint8 (N, H, W, 3), int64 labels).
    Images must share one size (SimpleRGBImageDecoder)."""
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    loader = Loader(beton, batch_size=batch_size, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = [], []
    for im, lab in loader:
        images.append(np.array(im))
        labels.append(np.array(lab).reshape(-1))
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def read_ffcv_jpegs(beton: str, field: str = "image") -> list:
    """The stored bytes of every record's JPEG image in order, located with FFCV's ``Reader`` (metadata
    ``data_ptr`` + allocation table)."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader
    reader = Reader(beton)
    meta = reader.metadata[f"f{list(reader.handlers).index(field)}"]
    assert (meta["mode"] == IMAGE_MODES["jpg"]).all(), "records stored raw, not as JPEG"
    size_at = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    with open(beton, "rb") as f:
        out = []
        for ptr in meta["data_ptr"].tolist():
            f.seek(ptr)
            out.append(f.read(size_at[ptr]))
    return out


def read_dali(data_dir: str, shards: list):
    """All samples of a split's DALI shards (manifest entries) in order, with DALI's webdataset reader and image
    decoder on the CPU: (list of uint8 (H, W, 3), int64 labels)."""
    from nvidia.dali import fn, pipeline_def, types
    count = sum(s["count"] for s in shards)

    @pipeline_def(batch_size=count, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=[os.path.join(data_dir, s["tar"]) for s in shards],
                                         index_paths=[os.path.join(data_dir, s["index"]) for s in shards],
                                         ext=["jpg", "cls"], random_shuffle=False, name="reader")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls

    p = pipe()
    p.build()
    images, cls = p.run()
    return ([np.array(images[i]) for i in range(count)],
            np.array([int(bytes(np.array(cls[i])).decode()) for i in range(count)], dtype=np.int64))


def run_convert_cli(argv: list):
    """Run ``tools/convert_datasets.py`` in this process (FFCV's numba code compiles once per process):
    returns (exit code, stderr text)."""
    import contextlib
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "convert_datasets.py")
    spec = importlib.util.spec_from_file_location("_convert_datasets_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:  # argparse errors
            rc = e.code
    return rc, err.getvalue()
