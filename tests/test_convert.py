"""tools/convert_datasets.py on ImageNet-, CIFAR-100- and ImageFolder-style sources built from real photos, read back
with FFCV's Loader and DALI's webdataset reader (CPU), plus the bad-input, rerun, interrupt and determinism rules."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from datasets_builders import (BAD_CONVERTED, BAD_SKIPPED, CIFAR10_CLASSES, CIFAR100_CLASSES, make_cifar_release,
                               make_folder_tree, make_imagenet_tree, pack_imagenet_archives, photo_tiles, read_dali,
                               read_ffcv, run_convert_cli)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (32, 40)                       # (h, w) of the stored images; the sources' "large" class is twice that
COMMON = ["--workers", "2", "--no-progress", "--shard-size", "4", "--max-resolution", str(max(SIZE))]


def _manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return json.load(f)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _data_files(d):
    """{relative path: sha256} of every file in a dataset dir except the manifest (it holds a creation time)."""
    out = {}
    for base, _, files in os.walk(d):
        for f in files:
            rel = os.path.relpath(os.path.join(base, f), d)
            if rel != "manifest.json":
                out[rel] = _sha(os.path.join(d, rel))
    return out


def _jpeg_roundtrip_error(expected, quality):
    """PIL's own JPEG round trip of the expected pixels: the independent yardstick for "within JPEG tolerance"."""
    buf = io.BytesIO()
    Image.fromarray(expected).save(buf, format="JPEG", quality=quality)
    diff = np.abs(np.asarray(Image.open(buf).convert("RGB"), np.int16) - expected)
    return diff.mean(), np.percentile(diff, 99)


def _assert_close(stored, expected, what, quality=90):
    """Stored pixels may differ from the source by about what one JPEG encode at ``quality`` costs, no more (the
    factor 2 covers OpenCV's encoder vs PIL's and FFCV's fast TurboJPEG decoding; a wrong image, a channel swap or a
    shift is 5-20x the yardstick)."""
    assert stored.shape == expected.shape, (what, stored.shape, expected.shape)
    diff = np.abs(stored.astype(np.int16) - expected.astype(np.int16))
    ref_mean, ref_p99 = _jpeg_roundtrip_error(expected, quality)
    assert diff.mean() <= 2 * ref_mean + 1 and np.percentile(diff, 99) <= 2 * ref_p99 + 4, \
        (what, diff.mean(), np.percentile(diff, 99), ref_mean, ref_p99)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """Three ImageNet trees (val in folders / flat + LOC csv / flat + ground truth & devkit), each converted."""
    base = tmp_path_factory.mktemp("imagenet")
    out = {}
    for layout, extra in (("folders", []), ("loc_csv", ["--write-mode", "jpg"]), ("ground_truth", [])):
        src = str(base / layout)
        exp = make_imagenet_tree(src, size=SIZE, val_layout=layout)
        rc, err = run_convert_cli(["imagenet", "--src", src, "--out", str(base / f"out_{layout}")] + COMMON + extra)
        assert rc == 0, err
        out[layout] = (src, exp, str(base / f"out_{layout}" / "imagenet"), err)
    return out


def test_bad_inputs_are_listed_not_fatal(imagenet):
    _, exp, d, err = imagenet["folders"]
    m = _manifest(d)
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == set(exp.skipped["train"]) and len(skipped) == len(BAD_SKIPPED)
    assert "truncated" in skipped[exp.skipped["train"][0]] and "0 bytes" in skipped[exp.skipped["train"][1]]
    assert all(r for r in skipped.values())
    for path in skipped:
        assert path in err                                 # the stderr summary names each one
    converted = {os.path.basename(p) for p, _, _ in exp.splits["train"]}
    assert all(any(n.endswith(b) for n in converted) for b in BAD_CONVERTED)


@pytest.mark.parametrize("layout", ["folders", "loc_csv", "ground_truth"])
def test_imagenet_read_back(imagenet, layout):
    """Class order, labels, counts and pixels of both formats against the independently built expectation."""
    _, exp, d, _ = imagenet[layout]
    m = _manifest(d)
    assert m["classes"] == exp.classes == sorted(exp.classes) and m["num_classes"] == len(exp.classes)
    for split in ("train", "val"):
        rows = exp.splits[split]
        labels = np.array([lab for _, lab, _ in rows])
        assert m["splits"][split]["count"] == len(rows)
        assert m["splits"][split]["label_counts"] == np.bincount(labels, minlength=len(exp.classes)).tolist()
        images, got = read_ffcv(os.path.join(d, f"{split}.beton"))
        np.testing.assert_array_equal(got, labels)
        shards = m["formats"]["dali"][split]["shards"]
        assert [s["start"] for s in shards] == list(range(0, len(rows), 4))
        dimages, dgot = read_dali(d, shards)
        np.testing.assert_array_equal(dgot, labels)
        for (path, _, ref), a, b in zip(rows, images, dimages):
            _assert_close(a, ref, f"ffcv {path}")
            _assert_close(b, ref, f"dali {path}")


def test_ffcv_proportion_mode_stores_raw_pixels_exactly(imagenet):
    """Default ImageNet policy (proportion 0.5): raw records are the decoded source pixels (+-1 where shrunk 2x)."""
    from ffcv.reader import Reader
    _, exp, d, _ = imagenet["folders"]
    assert _manifest(d)["image_policy"]["write_mode"] == "proportion"
    reader = Reader(os.path.join(d, "train.beton"))
    modes = reader.metadata[f"f{reader.field_names.index('image')}"]["mode"]
    assert set(modes.tolist()) == {0, 1}                   # both JPEG (0) and raw (1) records occur
    images, _ = read_ffcv(os.path.join(d, "train.beton"))
    for (path, _, ref), img, mode in zip(exp.splits["train"], images, modes):
        if mode == 1:
            assert np.abs(img.astype(int) - ref).max() <= 1, path


def test_dali_index_matches_wds2idx(imagenet):
    """Our index file equals what DALI's own wds2idx tool writes for the same tar."""
    sys.path.insert(0, os.path.join(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                                    "site-packages"))
    wds2idx = pytest.importorskip("wds2idx")
    _, _, d, _ = imagenet["folders"]
    for s in _manifest(d)["formats"]["dali"]["train"]["shards"]:
        theirs = os.path.join(d, "theirs.idx")
        with wds2idx.IndexCreator(os.path.join(d, s["tar"]), theirs, verbose=False) as ic:
            ic.create_index()
        with open(theirs) as f, open(os.path.join(d, s["index"])) as g:
            assert g.read() == f.read()
        os.remove(theirs)


def test_wnid_order_file_and_dali_only(imagenet, tmp_path):
    src, exp, _, _ = imagenet["ground_truth"]
    rc, err = run_convert_cli(["imagenet", "--src", src, "--out", str(tmp_path), "--formats", "dali", "--splits",
                               "val", "--wnid-order", os.path.join(src, "devkit_wnids.txt")] + COMMON)
    assert rc == 0, err
    d = tmp_path / "imagenet"
    m = _manifest(d)
    assert list(m["formats"]) == ["dali"] and list(m["splits"]) == ["val"] and not os.path.exists(d / "val.beton")
    _, labels = read_dali(str(d), m["formats"]["dali"]["val"]["shards"])
    np.testing.assert_array_equal(labels, [lab for _, lab, _ in exp.splits["val"]])


@pytest.mark.parametrize("dataset,classes", [("cifar100", CIFAR100_CLASSES), ("cifar10", CIFAR10_CLASSES)])
def test_cifar_release(tmp_path, dataset, classes):
    """The official pickles (CIFAR-10's train split in five batch files) give every image, in order, with its label
    and the release's class names; the tar.gz and the extracted folder give the same files."""
    k = len(classes)
    src = make_cifar_release(str(tmp_path / "src"), dataset, train_per_class=200 // k, test_per_class=100 // k)
    rc, err = run_convert_cli([dataset, "--src", src, "--out", str(tmp_path / "out"), "--workers", "2",
                               "--no-progress"])
    assert rc == 0, err
    d = str(tmp_path / "out" / dataset)
    m = _manifest(d)
    assert m["classes"] == list(classes) and m["image_policy"]["max_resolution"] == 32
    for split, n, seed in (("train", 200, 0), ("val", 100, 1)):
        tiles = photo_tiles(n, (32, 32), seed)               # what make_cifar_release pickled, in order
        labels = np.arange(n) % k
        assert m["splits"][split] == {"count": n, "label_counts": np.bincount(labels, minlength=k).tolist()}
        images, got = read_ffcv(os.path.join(d, f"{split}.beton"))
        np.testing.assert_array_equal(got, labels)
        for i in range(n):
            _assert_close(images[i], tiles[i], f"ffcv {split} {i}", quality=95)
        dimages, dgot = read_dali(d, m["formats"]["dali"][split]["shards"])
        np.testing.assert_array_equal(dgot, labels)
        for i in range(n):
            _assert_close(dimages[i], tiles[i], f"dali {split} {i}", quality=95)
    # the extracted folder gives the same data
    rc, err = run_convert_cli([dataset, "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out2"),
                               "--workers", "2", "--no-progress"])
    assert rc == 0, err
    assert _data_files(d) == _data_files(str(tmp_path / "out2" / dataset))


def test_folder_tree(tmp_path):
    exp = make_folder_tree(str(tmp_path / "src"), classes=("tulip", "daisy", "rose"), size=SIZE)
    rc, err = run_convert_cli(["folder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                               "--formats", "ffcv"] + COMMON)
    assert rc == 0, err
    assert "warning:" not in err
    d = str(tmp_path / "out" / "folder")
    assert _manifest(d)["classes"] == ["daisy", "rose", "tulip"] and not os.path.exists(os.path.join(d, "dali"))
    for split in ("train", "val"):
        images, labels = read_ffcv(os.path.join(d, f"{split}.beton"))
        np.testing.assert_array_equal(labels, [lab for _, lab, _ in exp.splits[split]])
        for (path, _, ref), img in zip(exp.splits[split], images):
            _assert_close(img, ref, path)
    # --name: the same source beside it under another name, byte for byte, and --verify finds it by that name
    rc, err = run_convert_cli(["folder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--formats",
                               "ffcv", "--name", "flowers"] + COMMON)
    assert rc == 0, err
    named = str(tmp_path / "out" / "flowers")
    assert _manifest(named)["dataset"] == "flowers" and _manifest(d)["dataset"] == "folder"
    assert _data_files(named) == _data_files(d)
    rc, err = run_convert_cli(["folder", "--out", str(tmp_path / "out"), "--name", "flowers", "--verify"])
    assert rc == 0 and f"{named}: 2 files checked, no problem(s)" in err, err


def test_a_class_without_images_is_a_warning(tmp_path):
    """A class folder with no image (an interrupted extraction, say) stays a class, as its name sorts, and the
    summary names it per split; so does a class whose every image was skipped."""
    make_folder_tree(str(tmp_path / "src"), classes=("daisy", "rose"), per_class=1, size=SIZE)
    os.makedirs(tmp_path / "src" / "train" / "iris")
    os.remove(tmp_path / "src" / "val" / "rose" / "000.png")
    (tmp_path / "src" / "val" / "rose" / "000.png").write_bytes(b"not an image")
    rc, err = run_convert_cli(["folder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                               "--formats", "ffcv"] + COMMON)
    assert rc == 0, err
    m = _manifest(str(tmp_path / "out" / "folder"))
    assert m["classes"] == ["daisy", "iris", "rose"]
    assert m["splits"]["train"]["label_counts"] == [1, 0, 1] and m["splits"]["val"]["label_counts"] == [1, 0, 0]
    assert "warning: train has no image of 1 class(es): iris;" in err
    assert "warning: val has no image of 2 class(es): iris, rose;" in err


def test_same_input_same_bytes_whatever_the_workers(imagenet, tmp_path):
    src, _, d, _ = imagenet["folders"]
    args = ["imagenet", "--src", src, "--out", str(tmp_path)] + COMMON
    rc, err = run_convert_cli(args[:-len(COMMON)] + ["--workers", "1"] + COMMON[2:])
    assert rc == 0, err
    again = _data_files(str(tmp_path / "imagenet"))
    assert again == _data_files(d) and len(again) == 2 + 2 * (4 + 2)   # 2 betons, 4+2 shards with their indexes
    assert _manifest(str(tmp_path / "imagenet"))["formats"] == _manifest(d)["formats"]



def test_imagenet_archives_as_downloaded_convert_like_the_extracted_tree(imagenet, tmp_path):
    """ILSVRC2012_img_train.tar (a tar of class tars), the val tar and the devkit's tar.gz, read without
    extracting: the same bytes in every output file as the conversion of the extracted tree, and the same inputs
    skipped (the tree's bad cases, now inside the first class's tar).

    Both with --write-mode jpg: in the default mode a sample's index picks whether FFCV stores it raw, and the tree
    lists its bad folder and link as samples (the decoder skips them) where the archive's index leaves them out."""
    tree = imagenet["ground_truth"][0]
    src = str(tmp_path / "downloads")
    pack_imagenet_archives(tree, src)
    for source, out in ((tree, "from_tree"), (src, "from_archives")):
        rc, err = run_convert_cli(["imagenet", "--src", source, "--out", str(tmp_path / out), "--write-mode", "jpg"]
                                  + COMMON)
        assert rc == 0, err
    d, out = str(tmp_path / "from_tree" / "imagenet"), str(tmp_path / "from_archives" / "imagenet")
    assert _data_files(out) == _data_files(d)
    m, ref = _manifest(out), _manifest(d)
    assert m["classes"] == ref["classes"] and m["splits"] == ref["splits"]
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    first = ref["classes"][0]
    assert {os.path.basename(p) for p in skipped} == {os.path.basename(s["path"]) for s in ref["skipped"]}
    assert all(p.startswith(f"ILSVRC2012_img_train.tar/{first}.tar/{first}_") for p in skipped)
    assert "directory" in skipped[f"ILSVRC2012_img_train.tar/{first}.tar/{first}_folder.JPEG"]
    assert "link" in skipped[f"ILSVRC2012_img_train.tar/{first}.tar/{first}_broken_link.JPEG"]
    assert "truncated" in skipped[f"ILSVRC2012_img_train.tar/{first}.tar/{first}_truncated.JPEG"]


def test_archive_indexes_are_cached_per_archive_version(imagenet, tmp_path, monkeypatch):
    """Reading ILSVRC2012_img_train.tar's 1.28 M headers takes minutes, so its index is cached under the archive's
    path, size and time: a second read scans no header and gives the same index; a changed archive is scanned
    again; a damaged cache file is ignored; NEATT_CACHE_DIR='' turns the cache off."""
    import glob

    import neatt.datasets.tar_index as ti
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEATT_CACHE_DIR", str(cache))
    src = str(tmp_path / "downloads")
    pack_imagenet_archives(imagenet["ground_truth"][0], src)
    train, val = os.path.join(src, "ILSVRC2012_img_train.tar"), os.path.join(src, "ILSVRC2012_img_val.tar")
    scanned, real = [], ti._scan
    monkeypatch.setattr(ti, "_scan", lambda *a: scanned.append(a[4]) or real(*a))
    first = ti.index_tar_of_tars(train), ti.index_tar(val)
    assert len(scanned) > 2 and len(glob.glob(str(cache / "tar-index" / "*.npz"))) == 2
    assert sum(len(files) for files in first[0][0].values()) > 0 and first[0][1] and first[1][0]
    scanned.clear()
    assert (ti.index_tar_of_tars(train), ti.index_tar(val)) == first and scanned == []
    st = os.stat(val)
    os.utime(val, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))      # the archive changed: scanned again
    assert ti.index_tar(val) == first[1] and scanned == [val]
    for f in glob.glob(str(cache / "tar-index" / "*.npz")):
        with open(f, "wb") as fh:
            fh.write(b"not an index")
    assert ti.index_tar_of_tars(train) == first[0] and len(scanned) > 1
    shutil.rmtree(cache)
    monkeypatch.setenv("NEATT_CACHE_DIR", "")
    assert ti.index_tar(val) == first[1] and not cache.exists()


@pytest.mark.parametrize("damage", ["cut", "gzip"])
def test_a_damaged_train_archive_is_named_with_what_to_do(imagenet, tmp_path, damage):
    """A download cut short (inside a class tar) or a compressed file under the tar's name: exit 2, the archive
    and image-net.org's md5 named, no traceback, nothing written."""
    import gzip
    tree, _, _, _ = imagenet["ground_truth"]
    src = tmp_path / "downloads"
    pack_imagenet_archives(tree, str(src))
    archive = src / "ILSVRC2012_img_train.tar"
    data = archive.read_bytes()
    archive.write_bytes(data[:len(data) // 2] if damage == "cut" else gzip.compress(data))
    rc, err = run_convert_cli(["imagenet", "--src", str(src), "--out", str(tmp_path / "out")] + COMMON)
    assert rc == 2, err
    assert str(archive) in err and "1d675b47d978889d74fa0da5fadfb00e" in err and "Traceback" not in err
    assert ("cut short" if damage == "cut" else "not an uncompressed tar") in err
    assert not os.path.exists(tmp_path / "out" / "imagenet" / "manifest.json")

def _two_class_tree(tmp_path, per_class: int, common: list):
    """An ImageNet tree of 2 classes x ``per_class`` train and 2 x 2 val photos without bad cases: (source, CLI
    arguments converting it with ``common``, output dataset dir)."""
    src = str(tmp_path / "src")
    make_imagenet_tree(src, num_classes=2, per_class=per_class, val_per_class=2, size=SIZE, bad_cases=False)
    return src, ["imagenet", "--src", src, "--out", str(tmp_path / "out")] + common, str(tmp_path / "out/imagenet")


@pytest.fixture
def small_tree(tmp_path):
    return _two_class_tree(tmp_path, per_class=3, common=COMMON)


def test_rerun_is_a_noop_and_force_redoes(small_tree):
    _, args, d = small_tree
    assert run_convert_cli(args)[0] == 0
    files = _data_files(d)
    mtimes = {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in files}
    rc, err = run_convert_cli(args)
    assert rc == 0 and err.count("already complete") == 2
    assert {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in files} == mtimes
    rc, err = run_convert_cli(args + ["--force"])
    assert rc == 0 and "already complete" not in err
    assert all(os.stat(os.path.join(d, f)).st_mtime_ns != mtimes[f] for f in files)
    assert _data_files(d) == files
    mtimes = {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in files}
    rc, err = run_convert_cli(args + ["--force", "--splits", "val"])  # redoes val only, keeps train
    assert rc == 0, err
    assert all((os.stat(os.path.join(d, f)).st_mtime_ns == mtimes[f]) == f.startswith(("train", "dali/train"))
               for f in files)
    assert _data_files(d) == files and set(_manifest(d)["formats"]["dali"]) == {"train", "val"}
    rc, err = run_convert_cli(args + ["--jpeg-quality", "80"])        # other settings need --force
    assert rc == 1 and "--force" in err and "image_policy" in err


@pytest.mark.parametrize("where", ["shards", "beton"])
def test_interrupted_run_leaves_nothing_complete_and_rerun_finishes(small_tree, monkeypatch, tmp_path, where):
    _, args, d = small_tree
    rc, _ = run_convert_cli(args[:-len(COMMON)] + ["--out", str(tmp_path / "clean")] + COMMON)
    assert rc == 0
    clean = _data_files(str(tmp_path / "clean" / "imagenet"))

    import neatt.datasets.dali_writer as dw
    import neatt.datasets.ffcv_writer as fw
    calls = {"n": 0}
    real = dw.ShardWriter.write if where == "shards" else fw._StagedRecords.__getitem__

    def interrupted(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt                      # Ctrl-C in the middle of the train split
        return real(self, *a)
    if where == "shards":
        monkeypatch.setattr(dw.ShardWriter, "write", interrupted)
    else:   # inside FFCV's writer process, which dies; the parent sees an incomplete file
        monkeypatch.setattr(fw, "write_beton", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    rc, err = run_convert_cli(args)
    assert rc == 130 and "rerun" in err
    m = _manifest(d)
    assert "train" not in m["formats"].get("ffcv", {})
    if where == "shards":
        assert m["formats"] == {} and m["splits"] == {}
    else:
        assert "train" in m["formats"]["dali"]            # DALI finished before the .beton was interrupted
    listed = {s[k] for e in m["formats"].get("dali", {}).values() for s in e["shards"] for k in ("tar", "index")}
    for f in _data_files(d):   # nothing else looks complete: partial files and the checkpoint say what they are
        assert f in listed or f.endswith((".partial", ".resume.json")), f"{f} exists but the manifest does not list it"
    # a killed run leaves partial files behind (a SIGKILL runs no cleanup): fake some, plus a stray old shard
    os.makedirs(os.path.join(d, "dali"), exist_ok=True)
    for stale in ("train.beton.partial", "train.beton.staging.partial", "dali/train-00000.tar.partial",
                  "dali/train-00009.tar"):
        with open(os.path.join(d, stale), "wb") as f:
            f.write(b"junk")
    monkeypatch.undo()
    rc, err = run_convert_cli(args)
    assert rc == 0, err
    assert _data_files(d) == clean


def _resume_tree(tmp_path):
    """10 train images (checkpoints after 4 and 8 at --shard-size 4), 4 val; one decoding process, so that the
    test sees which samples are decoded."""
    return _two_class_tree(tmp_path, per_class=5, common=["--workers", "1"] + COMMON[2:])  # COMMON[:2]: --workers 2


def _decoded(monkeypatch, fail_at=None):
    """Record (index, split-relative path) of every sample decoded from now on; raise KeyboardInterrupt (Ctrl-C) on
    the train sample with index ``fail_at``."""
    import neatt.datasets.convert as conv
    seen, real = [], conv._prepare_one

    def prepare(args):
        index, item = args[0], args[1]
        if fail_at is not None and index == fail_at and "/train/" in item:
            raise KeyboardInterrupt
        seen.append((index, os.path.basename(os.path.dirname(os.path.dirname(item)))))
        return real(args)
    monkeypatch.setattr(conv, "_prepare_one", prepare)
    return seen


@pytest.mark.parametrize("where", ["pass", "assembly"])
def test_an_interrupted_split_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, where):
    """Stopped after the checkpoint at 4 train images (or in the .beton assembly, after the whole pass), a rerun
    decodes only what came after it and writes files byte-identical to an uninterrupted conversion."""
    src, args, d = _resume_tree(tmp_path)
    assert run_convert_cli(args[:3] + ["--out", str(tmp_path / "clean")] + args[5:])[0] == 0
    clean = _data_files(str(tmp_path / "clean" / "imagenet"))

    if where == "pass":
        _decoded(monkeypatch, fail_at=6)           # samples 4 and 5 are written after the checkpoint, then Ctrl-C
    else:
        import neatt.datasets.ffcv_writer as fw
        monkeypatch.setattr(fw, "write_beton", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    rc, err = run_convert_cli(args)
    assert rc == 130 and "last checkpoint" in err
    with open(os.path.join(d, "train.resume.json")) as f:
        ckpt = json.load(f)
    done = 4 if where == "pass" else 10
    assert ckpt["done"] == done and sum(ckpt["label_counts"]) == done and ckpt["skipped"] == []
    assert [s["count"] for s in ckpt["dali_shards"]] == ([4] if where == "pass" else [4, 4, 2])
    staged = os.path.join(d, "train.beton.staging.partial")
    assert ckpt["files"]["ffcv"]["train.beton.staging.partial"] < os.path.getsize(staged) or where == "assembly"
    # what a SIGKILL could leave after the checkpoint: bytes past the recorded sizes, a half-written next shard
    for rel in ("train.beton.staging.partial", "train.beton.records.partial", "dali/train-00000.tar.partial",
                "dali/train-00001.tar.partial"):
        with open(os.path.join(d, rel), "ab") as f:
            f.write(b"junk after the checkpoint")
    monkeypatch.undo()
    seen = _decoded(monkeypatch)
    rc, err = run_convert_cli(args)
    assert rc == 0, err
    assert f"imagenet/train: resuming the interrupted conversion at image {done} of 10" in err
    assert [i for i, split in seen if split == "train"] == list(range(done, 10))
    assert [i for i, split in seen if split == "val"] == [0, 1, 2, 3]
    assert _data_files(d) == clean                 # the checkpoint and partial files are gone too


@pytest.mark.parametrize("change", ["shard-size", "source", "formats", "force"])
def test_a_checkpoint_that_does_not_fit_the_rerun_is_not_resumed(tmp_path, monkeypatch, change):
    """Other settings, another source, a format the checkpoint lacks, or --force: the split starts over, says why,
    and the result equals a clean conversion with the rerun's arguments."""
    src, args, d = _resume_tree(tmp_path)
    _decoded(monkeypatch, fail_at=6)
    assert run_convert_cli(args + ["--formats", "dali"] if change == "formats" else args)[0] == 130
    monkeypatch.undo()
    if change == "shard-size":
        args = args + ["--shard-size", "3"]
    elif change == "source":
        cls = os.path.join(src, "train", sorted(os.listdir(os.path.join(src, "train")))[0])
        shutil.copy(os.path.join(cls, sorted(os.listdir(cls))[0]), os.path.join(cls, "zz_extra.JPEG"))
    elif change == "force":
        args = args + ["--force"]
    seen = _decoded(monkeypatch)
    rc, err = run_convert_cli(args)
    assert rc == 0, err
    why = {"shard-size": "the --shard-size changed", "formats": "it has no ffcv output", "force": None,
           "source": "the number of samples, samples (paths, labels) changed"}[change]
    assert "conversion at image" not in err
    assert why is None or f"imagenet/train: not resuming the interrupted conversion ({why}" in err
    assert [i for i, split in seen if split == "train"] == list(range(11 if change == "source" else 10))
    monkeypatch.undo()
    assert run_convert_cli(args[:3] + ["--out", str(tmp_path / "clean")] + args[5:])[0] == 0
    assert _data_files(d) == _data_files(str(tmp_path / "clean" / "imagenet"))


def test_a_failed_checkpoint_write_is_a_clear_error_and_the_rerun_resumes(tmp_path, monkeypatch):
    """A disk error while a checkpoint is made durable (here: fsync of the second checkpoint's new shard fails with
    ENOSPC) stops the run with exit code 1 and a message naming the file; the first checkpoint is resumed from."""
    import errno
    import neatt.datasets.resume as resume
    _, args, d = _resume_tree(tmp_path)
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("train-00001.tar.partial"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(resume.os, "fsync", fsync)
    rc, err = run_convert_cli(args)
    assert rc == 1 and "Traceback" not in err
    assert f"No space left on device: '{os.path.join(d, 'dali', 'train-00001.tar.partial')}'" in err, err
    monkeypatch.undo()
    rc, err = run_convert_cli(args)
    assert rc == 0, err
    assert "resuming the interrupted conversion at image 4 of 10" in err


def test_a_killed_conversion_resumes(tmp_path):
    """A real SIGKILL (no cleanup at all) once the first checkpoint exists; the rerun resumes and its files equal an
    uninterrupted conversion's."""
    src = str(tmp_path / "src")
    make_folder_tree(src, splits=("train",), per_class=200, size=(64, 80))
    args = ["folder", "--src", src, "--workers", "1", "--no-progress", "--shard-size", "8", "--splits", "train"]
    d = str(tmp_path / "out" / "folder")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "convert_datasets.py")] + args +
                            ["--out", str(tmp_path / "out")], stderr=subprocess.PIPE, text=True)
    ckpt = os.path.join(d, "train.resume.json")
    while not os.path.exists(ckpt) and proc.poll() is None:
        time.sleep(0.002)
    proc.kill()
    proc.communicate()
    with open(ckpt) as f:
        done = json.load(f)["done"]
    assert 8 <= done < 400, done                     # killed in the middle of the pass
    rc, err = run_convert_cli(args + ["--out", str(tmp_path / "out")])
    assert rc == 0, err
    assert f"folder/train: resuming the interrupted conversion at image {done} of 400" in err
    assert run_convert_cli(args + ["--out", str(tmp_path / "clean")])[0] == 0
    assert _data_files(d) == _data_files(str(tmp_path / "clean" / "folder"))


def test_verify_checks_every_file_against_the_manifest(small_tree):
    """--verify (no --src needed) reads every listed file: a byte changed in a shard (same size) is named by its
    sha256, a cut .beton by its size; exit 1 with the problems, 0 when all match."""
    _, args, d = small_tree
    assert run_convert_cli(args)[0] == 0
    verify = ["imagenet", "--out", os.path.dirname(d), "--verify"]
    rc, err = run_convert_cli(verify)
    n = len(_data_files(d))
    assert rc == 0 and f"{d}: {n} files checked, no problem(s)" in err
    shard = os.path.join(d, "dali", "train-00000.tar")
    with open(shard, "r+b") as f:
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 1]))
    beton = os.path.join(d, "val.beton")
    os.truncate(beton, os.path.getsize(beton) - 1)
    rc, err = run_convert_cli(verify)
    assert rc == 1 and f"dali/train: {shard} has another sha256 than the manifest lists" in err
    assert f"ffcv/val: {beton} holds" in err and f"{n} files checked, 2 problem(s)" in err
    index = os.path.join(d, "dali", "val-00000.idx")              # index files too: an offset changed in place
    with open(index, "r+b") as f:
        text = f.read()
        f.seek(0)
        f.write(text.replace(b"jpg 512 ", b"jpg 513 ", 1))  # the first member starts after its 512-byte header
    assert os.path.getsize(index) == len(text)
    rc, err = run_convert_cli(verify)
    assert rc == 1 and f"dali/val: {index} has another sha256" in err and f"{n} files checked, 3 problem(s)" in err
    with open(index, "a") as f:
        f.write("\n")
    rc, err = run_convert_cli(verify)
    assert rc == 1 and f"dali/val: {index} holds" in err
    rc, err = run_convert_cli(["imagenet", "--out", os.path.join(d, "nowhere"), "--verify"])
    assert rc == 1 and "manifest.json" in err and "Traceback" not in err


def test_strict_makes_skips_an_error(imagenet, tmp_path):
    src, exp, _, _ = imagenet["folders"]
    rc, err = run_convert_cli(["imagenet", "--src", src, "--out", str(tmp_path), "--strict", "--formats", "dali",
                               "--splits", "train"] + COMMON)
    assert rc == 1 and "--strict" in err
    assert all(p in err for p in exp.skipped["train"])
    m = _manifest(tmp_path / "imagenet")
    assert m["formats"] == {} and not [f for f in _data_files(tmp_path / "imagenet")]


def test_missing_source_names_the_layout_exit_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_datasets.py"), "imagenet", "--src",
                        str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "train/<wnid>/*.JPEG" in r.stderr and str(tmp_path / "nowhere") in r.stderr
    for args, needle in ((["cifar100", "--src", str(tmp_path)], "cifar-100-python.tar.gz"),
                         (["cifar10", "--src", str(tmp_path)], "data_batch_1, data_batch_2"),
                         (["folder", "--src", str(tmp_path / "nowhere")], "<split>/<class>/<image>"),
                         (["imagenet"], "needs --src"),
                         (["digits", "--name", "a/b"], "--name 'a/b': a folder name under --out"),
                         (["digits", "--name", ".."], "--name '..': a folder name under --out"),
                         (["digits", "--shard-size", "0"], "--shard-size must be >= 1, got 0"),
                         (["digits", "--max-resolution", "0"], "--max-resolution must be >= 1, got 0"),
                         (["digits", "--jpeg-quality", "0"], "--jpeg-quality must be in 1..100, got 0")):
        rc, err = run_convert_cli(args + ["--out", str(tmp_path / "out")])
        assert rc == 2 and needle in err, err
    (tmp_path / "a_file").write_text("x")
    rc, err = run_convert_cli(["digits", "--out", str(tmp_path / "a_file")])
    assert rc == 2 and f"--out {tmp_path / 'a_file'} is a file; pass a folder" in err, err


def test_misstructured_imagenet(tmp_path):
    src = tmp_path / "src"
    (src / "train" / "cats").mkdir(parents=True)
    rc, err = run_convert_cli(["imagenet", "--src", str(src), "--out", str(tmp_path / "out")])
    assert rc == 2 and "not wnids" in err and "ILSVRC2012" in err
    make_imagenet_tree(str(tmp_path / "flat"), num_classes=2, per_class=1, val_per_class=1, val_layout="loc_csv",
                       bad_cases=False)
    os.remove(tmp_path / "flat" / "LOC_val_solution.csv")
    rc, err = run_convert_cli(["imagenet", "--src", str(tmp_path / "flat"), "--out", str(tmp_path / "out")])
    assert rc == 2 and "no labels file" in err and "LOC_val_solution.csv" in err
