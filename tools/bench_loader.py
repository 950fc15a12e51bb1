"""Loader throughput per backend on the same dataset, side by side, in images/s (higher is better).

    .venv/bin/python tools/bench_loader.py --make-photos 2000 --data /tmp/neatt-photos --json bench-loader.json
    .venv/bin/python tools/bench_loader.py --data data/imagenet --batch-size 128 --workers 8 --device cuda

Every row reads the same converted dataset's train split with the same batch size, worker count, image size
and seed. ``img_per_s`` is the backend alone: decode + random-resized-crop (bicubic) + horizontal flip to uint8
batches on ``--device`` (each backend flips as it writes the crop, see pipelines.crop.flip_flags).
``normalized_img_per_s`` is what the trainer gets: the same, normalized into float32 channels-last batches on
the device (no auto-augment or erasing: those are measured separately, by tools/bench_augment.py's ``run()``,
whose figures are included). Rounds alternate between the rows and each row's best
full epoch counts, so load from other processes hits them alike; the first pass of each row (FFCV's numba
compilation, worker start-up) is not timed.

``--make-photos N`` first builds an ImageNet-like dataset: N JPEGs of about 400x350 px (random crops of the
photos that scikit-learn and scikit-image ship, resized and re-encoded at quality 90) in 10 classes, 90/10
train/val, written as a class-folder tree under ``<data>/src`` and converted with
``tools/convert_datasets.py folder`` into ``<data>/out/folder`` (the dataset dir then benchmarked), in the
formats that ``--backends`` read (the dali and torch backends both read the DALI shards, so a machine without
FFCV can run ``--backends torch,dali``).
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import neatt  # noqa: E402,F401  (first, so that its OpenMP setting precedes torch's load, as in the trainer)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.augment import AugmentConfig  # noqa: E402
from neatt.runtime import configure_cpu_allocator  # noqa: E402
from neatt.fileio import write_json_atomic  # noqa: E402
from pipelines.base import BACKENDS, build_loader  # noqa: E402

def make_photos(root: str, n: int, formats: str, seed: int = 0) -> str:
    """Write ``n`` ~400x350 photo JPEGs as ``<root>/src/{train,val}/class_k/*.jpg``, convert them to
    ``formats`` (convert_datasets.py's ``--formats``); return the dataset dir."""
    import skimage.data
    from sklearn.datasets import load_sample_images
    photos = list(load_sample_images().images) + [skimage.data.astronaut(), skimage.data.coffee(),
                                                    skimage.data.chelsea()]
    rng = np.random.default_rng(seed)
    src = os.path.join(root, "src")
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        ch, cw = rng.integers(200, min(300, p.shape[0]) + 1), rng.integers(220, min(450, p.shape[1]) + 1)
        y, x = rng.integers(0, p.shape[0] - ch + 1), rng.integers(0, p.shape[1] - cw + 1)
        size = (int(rng.integers(360, 441)), int(rng.integers(315, 386)))  # (w, h) around 400x350
        img = Image.fromarray(p[y:y + ch, x:x + cw]).resize(size, Image.BICUBIC)
        split = "val" if i % 10 == 9 else "train"  # runs of 10 images per class: each class in both splits
        path = os.path.join(src, split, f"class_{i // 10 % 10}", f"{i:06d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path, quality=90)
    out = os.path.join(root, "out")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_datasets.py"), "folder", "--src", src,
                    "--out", out, "--formats", formats, "--no-progress", "--force"], check=True)
    return os.path.join(out, "folder")


def time_epochs(loaders: dict, rounds: int, device: torch.device, workers: int) -> dict:
    """Best full-epoch images/s per backend, rounds alternating between backends: ``img_per_s`` for the backend
    alone (decode + crop + resize + flip to uint8 batches on the device, the loader's ``_iter_uint8``),
    ``normalized_img_per_s`` for what the trainer gets (the loader's normalized float batches). The uint8 epochs
    are also split at their first batch: ``first_batch_s``, the pipeline's start-up (a DALI pipeline is built per
    pass, FFCV's and torch's workers fill their queues), and ``steady_img_per_s``, the rest of the epoch, which is
    what a long ImageNet epoch sees."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: {"normalized": [], "uint8": [], "first": [], "steady": []} for name in loaders}
    counts = {}
    for r in range(rounds + 1):
        for name, loader in loaders.items():
            for kind in ("normalized", "uint8") if r > 0 else ("normalized",):  # round 0 warms up (compiles)
                torch.set_num_threads(workers)  # FFCV changes torch's thread count; give every backend the same
                loader.set_epoch(r)
                sync()
                t0 = time.perf_counter()
                n = n_first = 0
                for images, _ in (loader if kind == "normalized" else loader._iter_uint8(r, 0)):
                    if kind == "uint8" and not n_first:  # the start-up split; a sync in the other epochs is waste
                        sync()
                        t_first, n_first = time.perf_counter(), images.shape[0]
                    n += images.shape[0]
                sync()
                t_end = time.perf_counter()
                if r > 0:
                    times[name][kind].append(t_end - t0)
                    if kind == "uint8":
                        times[name]["first"].append(t_first - t0)
                        times[name]["steady"].append((n - n_first) / (t_end - t_first) if n > n_first else 0.0)
                counts[name] = n
    return {name: {"img_per_s": counts[name] / min(t["uint8"]), "epoch_s": t["uint8"],
                   "first_batch_s": t["first"], "steady_img_per_s": max(t["steady"]),
                   "normalized_img_per_s": counts[name] / min(t["normalized"]), "normalized_epoch_s": t["normalized"],
                   "images_per_epoch": counts[name]}
            for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset dir (or, with --make-photos, where to build one)")
    p.add_argument("--make-photos", type=int, default=0, metavar="N", help="first build N photo JPEGs")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma list of {','.join(BACKENDS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2, help="decoding workers/threads of every backend")
    p.add_argument("--rounds", type=int, default=2, help="timed epochs per backend (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--aa", default="v0", help="--aa policy of the augmentation comparison (bench_augment)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    configure_cpu_allocator()  # as the trainer does; applies to both sides of the comparison
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        p.error(f"--backends: unknown {sorted(unknown)}; choose from {sorted(BACKENDS)}")
    if args.make_photos:
        formats = ",".join(sorted({BACKENDS[b][2] for b in backends}))  # the manifest format each one reads
        data = make_photos(args.data, args.make_photos, formats)
    else:
        data = args.data

    device = torch.device(args.device)
    augment = AugmentConfig(aa=None, reprob=0.0, hflip=0.5)  # flip (in the backend) + normalize (on the device)
    try:
        AugmentConfig(aa=args.aa, img_size=args.image_size)  # checked now, not after the loaders' timing
        loaders = {b: build_loader(data, split="train", backend=b,
                                   batch_size=args.batch_size, image_size=args.image_size, train=True, seed=0,
                                   device=device, num_workers=args.workers, augment=augment) for b in backends}
    except ValueError as e:  # LoaderError is one: no dataset there, a backend missing, ...
        p.error(str(e))
    results = time_epochs(loaders, args.rounds, device, args.workers)

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import bench_augment
    # one thread: timm's PIL transform works one image at a time, so more threads would favour our side only
    aug = bench_augment.run(aa=args.aa, batch_size=args.batch_size, img_size=args.image_size, threads=1,
                            device=args.device)

    base = results.get("torch", {}).get("img_per_s")
    print(f"loaders: {data} train, batch {args.batch_size}, {args.image_size} px, {args.workers} workers, "
          f"device {device}, best of {args.rounds} epochs")
    base_norm = results.get("torch", {}).get("normalized_img_per_s")
    print(f"{'backend':10s} {'img/s':>10s} {'x torch':>8s} {'normalized':>12s} {'x torch':>8s} "
          f"{'1st batch s':>12s} {'steady img/s':>12s}")
    print("  (img/s: decode + crop + flip to uint8 batches, whole epochs; normalized: + normalize into float "
          "batches; 1st batch s: from the epoch's start to its first uint8 batch, the pipeline's start-up; steady "
          "img/s: the uint8 epoch after its first batch)")
    for name, r in results.items():
        ratio = f"{r['img_per_s'] / base:8.2f}" if base else "       -"
        ratio_norm = f"{r['normalized_img_per_s'] / base_norm:8.2f}" if base_norm else "       -"
        print(f"{name:10s} {r['img_per_s']:10.1f} {ratio} {r['normalized_img_per_s']:12.1f} {ratio_norm} "
              f"{min(r['first_batch_s']):12.3f} {r['steady_img_per_s']:12.1f}")
    print(f"augmentation --aa {args.aa} (bench_augment.run): timm PIL {aug['timm_pil']['img_per_s']:.1f} img/s, "
          f"DeviceAugment {aug['device_augment']['img_per_s']:.1f} img/s, ratio {aug['ratio']:.2f}")

    if args.json:
        out = {
            "backends": results,
            "ratios_to_torch": {n: r["img_per_s"] / base for n, r in results.items()} if base else None,
            "normalized_ratios_to_torch": ({n: r["normalized_img_per_s"] / base_norm for n, r in results.items()}
                                           if base_norm else None),
            "augment": aug,
            "config": {k: v for k, v in vars(args).items() if k != "json"} | {"data": data},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(out, args.json, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
