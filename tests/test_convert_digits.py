"""`tools/convert_datasets.py digits`: the embedded demo dataset, read back with FFCV's and DALI's own readers."""
import hashlib
import json
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from datasets_builders import read_dali, read_ffcv, run_convert_cli
from neatt.datasets.sources import render_digits


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    rc, err = run_convert_cli(["digits", "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == 0, err
    return os.path.join(out, "digits")


@pytest.fixture(scope="module")
def reference():
    """sklearn's digits and its stratified 80/20 split (seed 0): the labels the converter must store, in order."""
    d = load_digits()
    tr, va = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
    return d, {"train": np.sort(tr), "val": np.sort(va)}


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_manifest(digits_dir, reference):
    d, idx = reference
    with open(os.path.join(digits_dir, "manifest.json")) as f:
        m = json.load(f)
    assert m["dataset"] == "digits" and m["source"] is None and m["format_version"] == 1
    assert m["classes"] == [str(i) for i in range(10)] and m["num_classes"] == 10
    assert m["image_policy"]["max_resolution"] == 32 and m["image_policy"]["jpeg_quality"] == 95
    assert m["skipped"] == []
    for split in ("train", "val"):
        assert m["splits"][split]["count"] == len(idx[split])
        assert m["splits"][split]["label_counts"] == np.bincount(d.target[idx[split]], minlength=10).tolist()
        e = m["formats"]["ffcv"][split]
        assert e["file"] == f"{split}.beton"
        p = os.path.join(digits_dir, e["file"])
        assert e["bytes"] == os.path.getsize(p) and e["sha256"] == _sha256(p)
        shards = m["formats"]["dali"][split]["shards"]
        assert sum(s["count"] for s in shards) == len(idx[split]) and shards[0]["start"] == 0
        for s in shards:
            assert s["sha256"] == _sha256(os.path.join(digits_dir, s["tar"]))
            assert s["index_bytes"] == os.path.getsize(os.path.join(digits_dir, s["index"]))
    assert not [f for f in os.listdir(digits_dir) if "partial" in f]


def test_rendering_is_the_digit(reference):
    """Each 32x32 RGB image, averaged back to 8x8 gray, must correlate with the original digit."""
    d, _ = reference
    rgb = render_digits(d.images[:200]).astype(np.float64)
    assert rgb.shape == (200, 32, 32, 3)
    small = rgb.mean(axis=3).reshape(200, 8, 4, 8, 4).mean(axis=(2, 4))
    corr = [np.corrcoef(small[i].ravel(), d.images[i].ravel())[0, 1] for i in range(200)]
    assert min(corr) > 0.8, min(corr)
    assert (rgb.std(axis=(1, 2)) > 1).all()  # three channels really differ across images, not gray copies
    assert np.array_equal(render_digits(d.images[:5]), render_digits(d.images[:5]))


def _assert_close(stored, source):
    diff = np.abs(stored.astype(np.int16) - source.astype(np.int16))
    # quality 95 with 4:2:0 chroma subsampling (FFCV's encoder settings) on sharp 32 px colour edges
    assert diff.mean() < 3.0 and np.percentile(diff, 99) <= 16, (diff.mean(), np.percentile(diff, 99))


@pytest.mark.parametrize("split", ["train", "val"])
def test_ffcv_and_dali_read_back(digits_dir, reference, split):
    d, idx = reference
    source = render_digits(d.images)[idx[split]]  # colours are drawn per original index
    images, labels = read_ffcv(os.path.join(digits_dir, f"{split}.beton"), batch_size=256)
    assert images.shape == (len(idx[split]), 32, 32, 3)
    np.testing.assert_array_equal(labels, d.target[idx[split]])
    _assert_close(images, source)
    with open(os.path.join(digits_dir, "manifest.json")) as f:
        shards = json.load(f)["formats"]["dali"][split]["shards"]
    dimages, dlabels = read_dali(digits_dir, shards)
    np.testing.assert_array_equal(dlabels, d.target[idx[split]])
    _assert_close(np.stack(dimages), source)
