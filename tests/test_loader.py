"""The three loader backends on CPU, on datasets made by the real converter (tools/convert_datasets.py).

References are independent of pipelines/: labels and pixels in stored order from the library readers in
tests/datasets_builders.py (stock FFCV Loader, DALI's webdataset reader), torchvision/PIL for the transforms,
and pipelines.sharding (tested in test_sharding.py) for which samples a rank reads.
"""
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _cuda import no_host_sync
from datasets_builders import make_folder_tree, read_ffcv, read_ffcv_jpegs, run_convert_cli
from pipelines.augment import AugmentConfig
from pipelines.base import LoaderError, build_loader
from pipelines.crop import eval_resize_geometry, flip_flags, rrc_windows
from pipelines.sharding import ShardedOrder

BACKENDS = ["ffcv", "dali", "torch"]
BS, SIZE = 64, 32
TRAIN_AUG = AugmentConfig(aa="rand-m9-mstd0.5-inc1", reprob=0.25, hflip=0.5)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader_data")
    rc, err = run_convert_cli(["digits", "--out", str(out), "--workers", "1", "--no-progress"])
    assert rc == 0, err
    return str(out / "digits")


@pytest.fixture(scope="module")
def stored_labels(digits):
    """Labels in stored order, read by stock FFCV (the converter's order contract)."""
    return {split: read_ffcv(os.path.join(digits, f"{split}.beton"))[1] for split in ("train", "val")}


def _build(data, backend, split="train", **kw):
    args = dict(split=split, backend=backend, batch_size=BS, image_size=SIZE, train=split == "train",
                num_workers=1, seed=11, augment=TRAIN_AUG)
    args.update(kw)
    return build_loader(data, **args)


def _uint8_epoch(loader, epoch, start=0):
    """The backend's uint8 batches (before on-device augmentation) of one epoch from batch `start` on, copied (FFCV
    reuses its buffers)."""
    return [(x.clone(), y.clone()) for x, y in loader._iter_uint8(epoch, start)]


def _assert_same_batches(got, want):
    """Two lists of (images, labels) batches: as many, and equal bit for bit."""
    assert len(got) == len(want)
    for (xg, yg), (xw, yw) in zip(got, want):
        assert torch.equal(yg, yw) and torch.equal(xg, xw)


def _image_keys(batches):
    return sorted(hashlib.sha1(img.contiguous().numpy().tobytes()).hexdigest()
                  for x, _ in batches for img in x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_batches_follow_the_contract(digits, stored_labels, backend):
    """Train and val: shapes, dtype, channels-last, device, labels of the sharded order; then exact resume."""
    for split in ("train", "val"):
        loader = _build(digits, backend, split)
        loader.set_epoch(1)
        batches = [(x.clone(), y.clone()) for x, y in loader]
        order = ShardedOrder(len(stored_labels[split]), batch_size=BS, seed=11, shuffle=split == "train",
                             pad=split == "train", drop_last=split == "train")
        assert len(batches) == len(loader) == order.num_batches
        for images, labels in batches:
            assert images.dtype == torch.float32 and images.device.type == "cpu"
            assert images.shape[1:] == (3, SIZE, SIZE) and images.shape[0] == labels.shape[0]
            assert images.is_contiguous(memory_format=torch.channels_last)
            assert labels.dtype == torch.int64
        labels = torch.cat([y for _, y in batches]).numpy()
        assert np.array_equal(labels, stored_labels[split][order.indices(1)])
        if split == "val":
            assert sorted(labels.tolist()) == sorted(stored_labels["val"].tolist())  # every sample once

    # resume: stop after 3 batches of epoch 1, rebuild, load the state: the same remaining batches, bit for bit
    loader = _build(digits, backend, num_workers=2 if backend == "torch" else 1)
    loader.set_epoch(1)
    full, state = [], None
    for k, (x, y) in enumerate(loader):
        full.append((x.clone(), y.clone()))
        if k == 2:
            state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 3
    resumed = _build(digits, backend)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # states go through checkpoints
    resumed.set_epoch(1)  # what the trainer calls; the same epoch keeps the position
    rest = [(x.clone(), y.clone()) for x, y in resumed]
    _assert_same_batches(rest, full[3:])
    resumed.set_epoch(2)  # a new epoch starts at its first batch, in another order
    nxt = next(iter(resumed))
    assert resumed.state_dict()["batches_done"] == 1
    assert not torch.equal(nxt[1], full[0][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_image_size_gives_what_a_loader_built_at_that_size_gives(digits, backend):
    """Progressive resizing: after set_image_size(s), a loader built at SIZE reads, augments (the aa's translate
    range follows s, as timm derives it) and resumes exactly as a loader built at s; and back."""
    small = SIZE // 2
    loader = _build(digits, backend)
    loader.set_epoch(1)
    first_at_size = next(iter(loader))[0]
    loader.set_image_size(small)
    loader.set_epoch(2)
    got = [(x.clone(), y.clone()) for x, y in loader]
    reference = _build(digits, backend, image_size=small)
    reference.set_epoch(2)
    want = [(x.clone(), y.clone()) for x, y in reference]
    assert got[0][0].shape[1:] == (3, small, small)
    _assert_same_batches(got, want)
    assert loader.augment.policy.hparams["translate_const"] == int(0.45 * small)

    state = reference.state_dict()  # a resume needs the size it was saved at
    with pytest.raises(LoaderError, match=f"image_size={small} but this loader has image_size={SIZE}"):
        _build(digits, backend).load_state_dict(state)
    loader.set_image_size(SIZE)  # back to the built size: the first batch of epoch 1 again
    loader.set_epoch(1)
    assert torch.equal(next(iter(loader))[0], first_at_size)
    with pytest.raises(LoaderError, match="val loader keeps the image size"):
        _build(digits, backend, "val").set_image_size(small)


def test_set_image_size_ffcv_still_equals_torchvision(digits):
    """FFCV resizes into buffers it sizes per pass: at the new size its pixels are still torchvision's."""
    out = {}
    for b in ("ffcv", "torch"):
        loader = _build(digits, b)
        _uint8_epoch(loader, 0)
        loader.set_image_size(SIZE - 8)
        out[b] = _uint8_epoch(loader, 1)
    assert out["ffcv"][0][0].shape[1:] == (3, SIZE - 8, SIZE - 8)
    _assert_same_batches(out["ffcv"], out["torch"])


def test_val_batches_ignore_the_train_augmentation(digits):
    """A val loader given the train AugmentConfig (flip, erasing, color jitter) normalizes only."""
    jitter = AugmentConfig(color_jitter=0.4, reprob=0.5, hflip=0.5)
    got = next(iter(_build(digits, "torch", split="val", augment=jitter)))[0]
    want = next(iter(_build(digits, "torch", split="val", augment=AugmentConfig(reprob=0.0, hflip=0.0))))[0]
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend,world_sizes", [("torch", (2, 3)), ("ffcv", (3,)), ("dali", (3,))])
def test_val_ranks_cover_every_sample_exactly_once(digits, backend, world_sizes):
    whole = _image_keys(_uint8_epoch(_build(digits, backend, "val"), 0))
    assert len(set(whole)) > 0.9 * len(whole)  # images tell samples apart (digits repeat a little)
    for ws in world_sizes:
        parts = [_uint8_epoch(_build(digits, backend, "val", rank=r, world_size=ws), 0) for r in range(ws)]
        assert sorted(k for p in parts for k in _image_keys(p)) == whole


def test_backends_read_the_same_samples_in_the_same_order(digits):
    """Same labels batch by batch. Pixels: FFCV's equal torchvision's exactly (Pillow's JPEG decode and bicubic
    resize of the same window); DALI's as close as its decoder and its own cubic filter allow."""
    for split in ("train", "val"):
        out = {b: _uint8_epoch(_build(digits, b, split), 3) for b in BACKENDS}
        ref = out["torch"]
        for b in ("ffcv", "dali"):
            assert len(out[b]) == len(ref)
            diffs = []
            for (xa, ya), (xb, yb) in zip(out[b], ref):
                assert torch.equal(ya, yb)
                assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.uint8
                diffs.append((xa.int() - xb.int()).abs().float().flatten())
            mean = torch.cat(diffs).mean().item()
            assert mean == 0.0 if b == "ffcv" else mean < 3.0, (b, split, mean)


@pytest.mark.parametrize("split,size,rrc", [("train", 16, {}), ("train", 16, dict(scale=(0.5, 0.6), ratio=(1, 2))),
                                            ("val", 16, {}), ("val", SIZE, {})])
def test_ffcv_output_is_pillows_resize_of_its_window(digits, split, size, rrc):
    """Every FFCV output is Pillow's bicubic resize of its window of the stored JPEG as Pillow decodes it.
    Tolerance 0: the window decoder uses Pillow's libjpeg settings, and the resampler reproduces Pillow's integer
    arithmetic and order of passes. Train at 16 px both shrinks and enlarges windows of the
    32 px digits; val shrinks to 18 px at 16, enlarges to 36 px at 32. `rrc`: the loader's scale/ratio ranges.
    Train crops are mirrored where pipelines.crop.flip_flags says so (TRAIN_AUG.hflip = 0.5)."""
    stored = np.stack([np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
                       for jpeg in read_ffcv_jpegs(os.path.join(digits, f"{split}.beton"))])
    train = split == "train"
    loader = _build(digits, "ffcv", split, image_size=size, **rrc)
    out = torch.cat([x for x, _ in _uint8_epoch(loader, 2)]).permute(0, 2, 3, 1).numpy()
    idx = ShardedOrder(len(stored), batch_size=BS, seed=11, shuffle=train, pad=train, drop_last=train).indices(2)
    assert len(out) == len(idx)
    n, H, W = len(stored), stored.shape[1], stored.shape[2]
    if train:  # windows from pipelines.crop (tested against torchvision in test_loader_crop.py)
        win = rrc_windows(np.full(n, H)[idx], np.full(n, W)[idx], idx, seed=11, epoch=2, **rrc)
        flips = flip_flags(idx, seed=11, epoch=2, p=TRAIN_AUG.hflip)
        assert flips.any() and not flips.all()
        size_out = np.full((len(idx), 2), size)
        offset = np.zeros((len(idx), 2), np.int64)
    else:  # the whole image to eval_resize_geometry's size, then its center window
        rh, rw, top, left = eval_resize_geometry(H, W, size, 0.875)
        win = np.tile([0, 0, H, W], (len(idx), 1))
        size_out, offset = np.tile([rh, rw], (len(idx), 1)), np.tile([top, left], (len(idx), 1))
    shrink = (win[:, 2] >= size_out[:, 0]) & (win[:, 3] >= size_out[:, 1])
    if train and not rrc:
        assert shrink.any() and not shrink.all()  # shrinking and enlarging windows are both exercised
    for k, i in enumerate(idx):
        (y, x, h, w), (oh, ow), (oy, ox) = win[k], size_out[k], offset[k]
        window = Image.fromarray(stored[i, y:y + h, x:x + w])
        ref = np.asarray(window.resize((int(ow), int(oh)), Image.BICUBIC))
        if train and flips[k]:
            ref = ref[:, ::-1]
        assert np.array_equal(out[k], ref[oy:oy + size, ox:ox + size]), (split, size, k, i)


@pytest.mark.parametrize("W", [3, 2, 1])
def test_repeated_augmentation_gives_every_copy_its_own_crop_in_every_backend(digits, W):
    """aug_repeats=3 on W ranks: each rank's torch batches are Pillow's crops of the windows that the documented
    rule gives (pipelines.sharding: the epoch permutation, each sample 3 times in a row, dealt to the ranks in
    turn; copy c of sample i cropped with key i + c n), so a sample's copies get different crops, also when one
    rank reads several of them (W < 3, often in one batch); FFCV's batches equal torch's bit for bit, also resumed
    mid-epoch, and DALI's come close, as without repeats."""
    stored = np.stack([np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
                       for jpeg in read_ffcv_jpegs(os.path.join(digits, "train.beton"))])
    n, epoch = len(stored), 1
    aug = AugmentConfig(hflip=0.5)
    out = {b: [torch.cat([x for x, _ in _uint8_epoch(_build(digits, b, rank=k, world_size=W, aug_repeats=3,
                                                           augment=aug), epoch)]) for k in range(W)]
           for b in BACKENDS}
    plain = ShardedOrder(n, world_size=W, batch_size=BS, seed=11)
    stream = np.repeat(np.random.default_rng([11, epoch]).permutation(n), 3)[:W * plain.samples_per_rank]
    keys = stream + np.tile(np.arange(3), n)[:len(stream)] * n
    copies_differ = []
    for k in range(W):
        idx, key = stream[k::W][:plain.num_batches * BS], keys[k::W][:plain.num_batches * BS]
        win = rrc_windows(np.full(len(idx), stored.shape[1]), np.full(len(idx), stored.shape[2]), key, 11, epoch)
        flips = flip_flags(key, 11, epoch, 0.5)
        got = out["torch"][k].permute(0, 2, 3, 1).numpy()
        assert len(got) == len(idx)
        for j in range(0, len(idx), 7):  # every 7th image against its reference (all of them take long)
            y, x, h, w = win[j]
            ref = np.asarray(Image.fromarray(stored[idx[j], y:y + h, x:x + w]).resize((SIZE, SIZE), Image.BICUBIC))
            assert np.array_equal(got[j], ref[:, ::-1] if flips[j] else ref), (k, j)
        assert torch.equal(out["ffcv"][k], out["torch"][k])
        assert (out["dali"][k].int() - out["torch"][k].int()).abs().float().mean() < 3.0
        # resumed where a sample's reads straddle two batches (W < 3), the hard case for FFCV's per-read crops
        straddles = [b for b in range(1, plain.num_batches) if idx[b * BS - 1] == idx[b * BS]]
        assert bool(straddles) == (W < 3)
        start = straddles[0] if straddles else 3
        resumed = _build(digits, "ffcv", rank=k, world_size=W, aug_repeats=3, augment=aug)
        rest = torch.cat([x for x, _ in _uint8_epoch(resumed, epoch, start=start)])
        assert torch.equal(rest, out["ffcv"][k][start * BS:])
    first = {}  # a sample's first copy (rank, position), then whether its later copies look different
    for k in range(W):
        for j, i in enumerate(stream[k::W][:plain.num_batches * BS]):
            if i in first:
                k0, j0 = first[i]
                copies_differ.append(not torch.equal(out["torch"][k][j], out["torch"][k0][j0]))
            else:
                first[i] = (k, j)
    assert len(copies_differ) > 100 and np.mean(copies_differ) > 0.95


def test_torch_backend_leaves_the_global_rng_alone(digits):
    # The trainer's bitwise resume needs the global RNG (dropout, Ne-Att noise, mixup) untouched by data reading.
    loader = _build(digits, "torch")
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_non_square_photos_same_geometry_in_every_backend(tmp_path):
    """Real photo tiles of 36x52: the crop windows and the val center crop land on the same pixels everywhere
    (FFCV's equal torchvision's; a misplaced window would differ by far more than DALI's decoder does)."""
    make_folder_tree(str(tmp_path / "src"), classes=("a", "b"), per_class=6, size=(36, 52))
    rc, err = run_convert_cli(["folder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                               "--workers", "1", "--no-progress"])
    assert rc == 0, err
    data = str(tmp_path / "out" / "folder")
    for split in ("train", "val"):
        out = {b: _uint8_epoch(_build(data, b, split, batch_size=4, image_size=24), 0) for b in BACKENDS}
        for b in ("ffcv", "dali"):
            for (xa, ya), (xb, yb) in zip(out[b], out["torch"]):
                assert torch.equal(ya, yb)
                if b == "ffcv":
                    assert torch.equal(xa, xb), split
                else:
                    assert (xa.int() - xb.int()).abs().float().mean() < 4.0, (b, split)
    # DALI reads each image's size from its JPEG header once and keeps it: a second epoch is what a fresh loader
    # gives (a size kept as (height, width) would misplace these non-square windows)
    warm = _build(data, "dali", batch_size=4, image_size=24)
    _uint8_epoch(warm, 0)
    assert (warm._sizes == (52, 36)).all()
    _assert_same_batches(_uint8_epoch(warm, 1), _uint8_epoch(_build(data, "dali", batch_size=4, image_size=24), 1))


@pytest.mark.parametrize("interpolation", ["bilinear", "random"])
def test_train_interpolation_is_the_same_in_every_backend(digits, interpolation):
    """timm's --train-interpolation: FFCV's crops equal torchvision's bit for bit (Pillow's bilinear, or per image
    bilinear or bicubic). In torchvision's and DALI's batches, every image is exactly that backend's bicubic or
    bilinear crop, both pick the same filter for the same image, and with 'random' both filters occur."""
    def epoch(backend, f):
        return _uint8_epoch(_build(digits, backend, augment=dataclasses.replace(TRAIN_AUG, interpolation=f)), 2)

    out = {b: epoch(b, interpolation) for b in BACKENDS}
    _assert_same_batches(out["ffcv"], out["torch"])
    picked = {}
    for b in ("torch", "dali"):
        got = torch.cat([x for x, _ in out[b]])
        same = {f: (got == torch.cat([x for x, _ in epoch(b, f)])).flatten(1).all(1) for f in ("bicubic", "bilinear")}
        assert (same["bicubic"] | same["bilinear"]).all(), b
        picked[b] = same["bilinear"] & ~same["bicubic"]  # images a filter leaves unchanged count as both
    assert torch.equal(picked["torch"], picked["dali"])
    share = picked["torch"].float().mean()
    assert share > 0.9 if interpolation == "bilinear" else 0.3 < share < 0.7


# ----------------------------------------------------------------------------------------------- bad input
def test_missing_dataset_dir_and_manifest(tmp_path, digits):
    with pytest.raises(LoaderError, match="convert_datasets"):
        build_loader(str(tmp_path / "nope"), backend="torch")
    with pytest.raises(LoaderError, match="manifest.json not found: convert a dataset first"):
        build_loader(str(tmp_path), backend="torch")
    # the converter's --out folder instead of the dataset folder it made: the message names the dataset folder
    with pytest.raises(LoaderError, match=f"holds converted datasets: pass one of {re.escape(digits)}$"):
        build_loader(os.path.dirname(digits), backend="torch")


def test_a_partly_copied_dataset_names_the_file(tmp_path, digits):
    """A dataset directory copied in part (a .beton cut short, a shard index missing) fails when the loader is
    built, naming the file and the sizes, instead of inside FFCV's or DALI's reader."""
    import shutil
    copy = str(tmp_path / "digits")
    shutil.copytree(digits, copy)
    beton = os.path.join(copy, "train.beton")
    size = os.path.getsize(beton)
    os.truncate(beton, size - 4096)
    with pytest.raises(LoaderError, match=re.escape(f"{beton} holds {size - 4096:,} bytes, the manifest says "
                                                    f"{size:,}: an incomplete copy")):
        build_loader(copy, backend="ffcv")
    _build(copy, "torch", split="val")                         # the other split's files are whole
    index = os.path.join(copy, "dali", "train-00000.idx")
    os.remove(index)
    for backend in ("dali", "torch"):
        with pytest.raises(LoaderError, match=re.escape(f"{index} is missing (the manifest lists it)")):
            build_loader(copy, backend=backend)


def test_a_format_not_converted_names_the_backends_that_can_read(tmp_path, digits):
    """A dataset converted with --formats ffcv only: dali and torch (which read the DALI shards) are refused,
    and the message names the backend that can read it."""
    import json
    import shutil
    copy = tmp_path / "digits"
    shutil.copytree(digits, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["formats"]["dali"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for backend in ("dali", "torch"):
        with pytest.raises(LoaderError, match=f"backend '{backend}' reads the 'dali' format, which was not "
                                              f"converted for split 'train'.*--formats dali.*or use --backend ffcv$"):
            build_loader(str(copy), backend=backend)


def test_unknown_backend_split_and_bad_numbers(digits):
    with pytest.raises(LoaderError, match="'ffcv', 'torch'|\\['dali', 'ffcv', 'torch'\\]"):
        build_loader(digits, backend="tfrecord")
    with pytest.raises(LoaderError, match="split"):
        build_loader(digits, split="test", backend="torch")
    with pytest.raises(LoaderError, match="rank"):
        build_loader(digits, backend="torch", rank=2, world_size=2)
    with pytest.raises(LoaderError, match="crop_pct"):
        build_loader(digits, backend="torch", crop_pct=1.5)
    with pytest.raises(LoaderError, match=r"scale=\(0.5, 0.2\) must be \(min, max\)"):
        build_loader(digits, backend="ffcv", scale=(0.5, 0.2))
    with pytest.raises(LoaderError, match=r"ratio=\(0, 1\)"):
        build_loader(digits, backend="ffcv", ratio=(0, 1))


def test_ffcv_damaged_record_stops_with_the_reason(digits, tmp_path):
    """A JPEG record overwritten in the .beton: iterating raises (no hang), with the reason and the fix."""
    from ffcv.reader import Reader
    data = tmp_path / "digits"
    shutil.copytree(digits, data)
    beton = data / "train.beton"
    ptr = int(Reader(str(beton)).metadata["f0"]["data_ptr"][5])
    with open(beton, "r+b") as f:
        f.seek(ptr)
        f.write(b"\0" * 16)  # the JPEG's start-of-image marker and header are gone
    with pytest.raises(RuntimeError, match="stopped mid-epoch: a JPEG record of this .beton does not decode: it "
                                           "is damaged; re-run tools/convert_datasets.py with --force"):
        for _ in _build(str(data), "ffcv", augment=None):
            pass


def test_ffcv_decoder_not_built(digits, monkeypatch):
    """A checkout used without `make setup` (the C decoder never compiled): the message says how to build it, not
    to pip-install ffcv."""
    import pipelines
    monkeypatch.setitem(sys.modules, "pipelines._jpeg_window", None)  # what a missing extension module gives
    monkeypatch.delattr(pipelines, "_jpeg_window", raising=False)
    monkeypatch.delitem(sys.modules, "pipelines.ffcv_loader", raising=False)
    with pytest.raises(LoaderError, match=r"_jpeg_window.c is not built: run `make setup`") as info:
        build_loader(digits, backend="ffcv", image_size=SIZE)
    assert "pip install ffcv" not in str(info.value)


def test_format_not_converted(digits, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(digits, data)
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["formats"]["ffcv"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LoaderError, match="'ffcv' format.*convert_datasets"):
        build_loader(str(data), backend="ffcv")


def test_backend_not_installed(digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali now raises ImportError
    monkeypatch.delitem(sys.modules, "pipelines.dali_loader", raising=False)
    with pytest.raises(LoaderError, match="pip install nvidia-dali"):
        build_loader(digits, backend="dali", image_size=SIZE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_cuda_device_without_gpu(digits):
    with pytest.raises(LoaderError, match="no usable CUDA GPU.*device='cpu'"):
        build_loader(digits, backend="dali", image_size=SIZE, device="cuda")


def test_dali_gpu_decoder_arguments_are_dalis():
    """The GPU path's decoder arguments, which only a GPU runs, are arguments of DALI's decoder, not deprecated."""
    from nvidia.dali import backend
    from pipelines.dali_loader import MIXED_DECODER_ARGS
    schema = backend.GetSchema("decoders__Image")
    for name in MIXED_DECODER_ARGS:
        assert schema.HasArgument(name) and not schema.IsDeprecatedArg(name), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FFCV's ToDevice needs a GPU")
def test_ffcv_to_the_gpu_gives_its_cpu_batches(digits):
    """device='cuda' adds FFCV's ToDevice (non_blocking, from its pinned buffers) after the same CPU decode: the
    same uint8 batches bit for bit, on the GPU; then the augmented float batches, and no host-device sync after a
    pass's first batch (torch's sync debug mode raises on one)."""
    cpu = _uint8_epoch(_build(digits, "ffcv"), 0)
    gpu_loader = _build(digits, "ffcv", device="cuda")
    gpu = _uint8_epoch(gpu_loader, 0)
    assert len(gpu) == len(cpu) > 1
    for (xg, yg), (xc, yc) in zip(gpu, cpu):
        assert xg.is_cuda and yg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
    batches = iter(gpu_loader)
    images, labels = next(batches)
    assert images.is_cuda and images.dtype == torch.float32 and labels.is_cuda and labels.dtype == torch.int64
    with no_host_sync():
        assert len(list(batches)) == len(cpu) - 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI's GPU path (nvJPEG decode, GPU resize) needs a GPU")
def test_dali_on_the_gpu_matches_its_cpu_path(tmp_path):
    """device='cuda' takes DALI's other operators ('mixed' nvJPEG decode, GPU crop + cubic resize, GPU flip):
    the same samples in the same order as its CPU path, the batches on the GPU, and pixels as close as two JPEG
    decoders' (nvJPEG and libjpeg-turbo may round each pixel differently: mean difference under 1.5 levels).
    A DALI-only dataset, so that it runs where FFCV is not installed."""
    make_folder_tree(str(tmp_path / "src"), classes=("a", "b"), per_class=16, size=(72, 96))
    rc, err = run_convert_cli(["folder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                               "--formats", "dali", "--workers", "1", "--no-progress"])
    assert rc == 0, err
    data = str(tmp_path / "out" / "folder")
    for split in ("train", "val"):
        cpu = _uint8_epoch(_build(data, "dali", split, batch_size=8, image_size=64), 0)
        gpu_loader = _build(data, "dali", split, batch_size=8, image_size=64, device="cuda")
        gpu = _uint8_epoch(gpu_loader, 0)
        assert len(gpu) == len(cpu) == 4
        for (xg, yg), (xc, yc) in zip(gpu, cpu):
            assert xg.is_cuda and xg.dtype == torch.uint8 and xg.shape == xc.shape
            assert torch.equal(yg.cpu(), yc)
            assert (xg.cpu().int() - xc.int()).abs().float().mean() < 1.5, split
        batches = iter(gpu_loader)
        images, labels = next(batches)
        assert images.is_cuda and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.is_cuda and labels.dtype == torch.int64
        # after its first batch a pass never makes the host wait for the GPU (torch's sync debug mode raises):
        # the labels' copy and the augmentation are queued (pipelines.transfer)
        with no_host_sync():
            assert len(list(batches)) == 3


def test_image_size_above_stored_resolution_warns_and_works(digits):
    with pytest.warns(UserWarning, match="max_resolution=32.*re-convert"):
        loader = build_loader(digits, backend="torch", image_size=48, batch_size=8, num_workers=0)
    images, _ = next(iter(loader))
    assert images.shape == (8, 3, 48, 48)


def test_resume_state_from_other_settings_is_refused(digits):
    state = build_loader(digits, backend="torch", image_size=SIZE, batch_size=8, num_workers=0).state_dict()
    with pytest.raises(LoaderError, match="batch_size=8"):
        build_loader(digits, backend="torch", image_size=SIZE, batch_size=16,
                      num_workers=0).load_state_dict(state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stale_pass_stops_and_the_new_one_is_intact(digits, backend):
    """A loader has one position: resuming a pass after another one started raises, and does not take a batch
    from the new pass, which gives what a fresh loader resumed at the same position gives."""
    loader = _build(digits, backend, num_workers=1)
    stale = iter(loader)
    next(stale)
    new = iter(loader)  # continues from batch 1
    first = next(new)
    with pytest.raises(RuntimeError, match="one pass at a time"):
        next(stale)
    got = [first, *new]
    fresh = _build(digits, backend, num_workers=1)
    fresh.load_state_dict({"epoch": 0, "batches_done": 1})
    want = list(fresh)
    assert len(want) == len(loader) - 1
    _assert_same_batches(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("move", ["set_epoch", "load_state_dict"])
def test_moving_the_loader_stops_a_suspended_pass(digits, backend, move):
    """set_epoch/load_state_dict during a pass: the old pass raises instead of reading on (which used to
    overwrite the new position), and the next pass reads from the position set."""
    loader = _build(digits, backend, num_workers=1)
    stale = iter(loader)
    next(stale)
    if move == "set_epoch":
        loader.set_epoch(1)
    else:
        loader.load_state_dict({"epoch": 1, "batches_done": 0})
    with pytest.raises(RuntimeError, match="one pass at a time"):
        next(stale)
    assert (loader.state_dict()["epoch"], loader.state_dict()["batches_done"]) == (1, 0)
    got = list(loader)
    fresh = _build(digits, backend, num_workers=1)
    fresh.set_epoch(1)
    want = list(fresh)
    assert len(want) == len(loader)
    _assert_same_batches(got, want)
