#!/usr/bin/env python
"""Conversion throughput per output format, measured side by side, and a projection for ImageNet-1K.

Usage:
    python tools/bench_convert.py                          # 400 photo JPEGs, ImageNet policy, 1 and all workers
    python tools/bench_convert.py --images 1000 --workers 1,2,4 --json bench-convert.json

Source: an ImageFolder tree of real photos (scikit-learn's and scikit-image's sample images, random crops of
250-427 x 300-512 pixels, saved as quality-90 JPEG, 10 classes), converted with the ImageNet defaults of
tools/convert_datasets.py (max side 500, FFCV write mode proportion 0.5, quality 90). Each run converts into a
fresh directory, after one untimed warm-up (FFCV's numba compilation). Units: source images per second over the
whole conversion (decode, fix, resize, encode, write, checksum); ``x both`` = that rate / the rate for writing both
formats with the same workers. Best of ``--repeats``.

Projection: the per-image CPU cost of the parallel part (decode+resize+encode, from the 1-worker run) is spread over
``--cores`` workers at ``--efficiency``, capped by the serial parts measured here (the main process's writing, and
FFCV's single-process .beton assembly which runs after the parallel pass; both taken from the 1-worker run) and by
``--disk-mb-s`` for the bytes written. Figures from a 2-core shared machine; the assumptions are printed with the result.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from neatt.datasets.convert import ConvertOptions, convert  # noqa: E402
from neatt.datasets.images import ImagePolicy, prepare_image  # noqa: E402
from neatt.datasets.sources import folder_source  # noqa: E402
from neatt.fileio import write_json_atomic  # noqa: E402

IMAGENET_TRAIN = 1_281_167
POLICY = ImagePolicy(max_resolution=500, jpeg_quality=90, write_mode="proportion", compress_probability=0.5)


def build_source(root: str, n: int, seed: int = 0) -> dict:
    """An ImageNet-like ImageFolder tree of photo crops; returns its size statistics."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = list(load_sample_images().images) + [skimage.data.astronaut(), skimage.data.coffee(),
                                                  skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    pixels, nbytes = [], []
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        h = int(rng.integers(250, min(427, p.shape[0]) + 1))
        w = int(rng.integers(300, min(512, p.shape[1]) + 1))
        y, x = rng.integers(0, p.shape[0] - h + 1), rng.integers(0, p.shape[1] - w + 1)
        d = os.path.join(root, "train", f"class{i % 10}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{i:06d}.JPEG")
        Image.fromarray(p[y:y + h, x:x + w]).save(path, quality=90)
        pixels.append(h * w)
        nbytes.append(os.path.getsize(path))
    return {"images": n, "mean_pixels": float(np.mean(pixels)), "mean_bytes": float(np.mean(nbytes))}


def run_once(src, out: str, formats, workers: int, shard_size: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    opts = ConvertOptions(policy=POLICY, formats=formats, workers=workers, shard_size=shard_size, progress=False)
    t0 = time.perf_counter()
    res = convert(src, out, opts, log=open(os.devnull, "w"))
    wall = time.perf_counter() - t0
    t = res["timings"]["train"]["seconds"]
    m = res["manifest"]
    written = sum(e["bytes"] for e in m["formats"].get("ffcv", {}).values())
    written += sum(s["bytes"] for e in m["formats"].get("dali", {}).values() for s in e["shards"])
    return {"wall_s": wall, "prepare_s": t["prepare"], "ffcv_assembly_s": t.get("ffcv_finish", 0.0),
            "bytes": written}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=400, help="source images (default %(default)s)")
    p.add_argument("--workers", default=None, help="comma list of worker counts (default: 1 and all cores)")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting; the best counts (default %(default)s)")
    p.add_argument("--cores", type=int, default=32, help="projection: cores of the target machine")
    p.add_argument("--efficiency", type=float, default=0.8, help="projection: parallel efficiency on those cores")
    p.add_argument("--disk-mb-s", type=float, default=1000.0, help="projection: sustained write MB/s")
    p.add_argument("--shard-size", type=int, default=5000,
                   help="samples per DALI shard and between resume checkpoints (default %(default)s, the converter's)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, os.cpu_count() or 1})

    tmp = tempfile.mkdtemp(prefix="bench_convert_")
    try:
        stats = build_source(os.path.join(tmp, "src"), args.images)
        src = folder_source(os.path.join(tmp, "src"), splits=("train",))
        n = len(src.splits["train"])
        run_once(src, os.path.join(tmp, "warm"), ("ffcv", "dali"), workers[-1], args.shard_size)  # imports, numba

        # single-process cost of the parallel part, without any writing
        t0 = time.perf_counter()
        for i, (path, _) in enumerate(src.splits["train"]):
            prepare_image(path, i, POLICY, keep_raw=True)
        per_image_cpu = (time.perf_counter() - t0) / n

        rows = []
        for w in workers:
            for formats in (("ffcv", "dali"), ("ffcv",), ("dali",)):
                best = min((run_once(src, os.path.join(tmp, "out"), formats, w, args.shard_size)
                            for _ in range(args.repeats)),
                           key=lambda r: r["wall_s"])
                rows.append({"workers": w, "formats": "+".join(formats), "img_s": n / best["wall_s"], **best})
        print(f"\nbench_convert: {n} photo JPEGs (mean {stats['mean_pixels'] / 1e3:.0f} kpixel, "
              f"{stats['mean_bytes'] / 1e3:.0f} kB), policy {POLICY.as_dict()}, shard size {args.shard_size}, "
              f"{os.cpu_count()} cores")
        print(f"{'workers':>7} {'formats':>10} {'img/s':>8} {'x both':>7} {'ffcv assembly img/s':>20} {'MB out/img':>11}")
        for r in rows:
            both = next(b for b in rows if b["workers"] == r["workers"] and b["formats"] == "ffcv+dali")
            asm = n / r["ffcv_assembly_s"] if r["ffcv_assembly_s"] else float("nan")
            print(f"{r['workers']:>7} {r['formats']:>10} {r['img_s']:>8.1f} {r['img_s'] / both['img_s']:>7.2f} "
                  f"{asm:>20.0f} {r['bytes'] / n / 1e6:>11.3f}")
        print(f"single-process decode+resize+encode: {1 / per_image_cpu:.1f} img/s ({per_image_cpu * 1e3:.1f} ms/img)")

        # projection for ImageNet-1K train on --cores cores
        proj = {}
        for formats in ("ffcv+dali", "ffcv", "dali"):
            r = next(x for x in rows if x["workers"] == 1 and x["formats"] == formats)
            parallel = IMAGENET_TRAIN * per_image_cpu / (args.cores * args.efficiency)
            assembly = IMAGENET_TRAIN * r["ffcv_assembly_s"] / n
            # the 1-worker run does everything in one process: what it took beyond decode+encode and the .beton
            # assembly is the main process's own work (writing, checksums), which no number of workers divides
            serial = IMAGENET_TRAIN * max(r["wall_s"] - r["ffcv_assembly_s"] - n * per_image_cpu, 0.0) / n
            disk = IMAGENET_TRAIN * r["bytes"] / n * (2 if "ffcv" in formats else 1) / (args.disk_mb_s * 1e6)
            total = max(parallel, serial, disk) + assembly
            proj[formats] = {"parallel_s": parallel, "serial_bound_s": serial, "disk_bound_s": disk,
                             "ffcv_assembly_s": assembly, "total_s": total,
                             "output_bytes": IMAGENET_TRAIN * r["bytes"] / n}
            print(f"projection {formats:>9}: ImageNet-1K train ({IMAGENET_TRAIN} images) on {args.cores} cores: "
                  f"{total / 60:.0f} min (parallel {parallel / 60:.0f}, serial bound {serial / 60:.0f}, disk bound "
                  f"{disk / 60:.0f}, then .beton assembly {assembly / 60:.0f}); output "
                  f"{proj[formats]['output_bytes'] / 1e12:.2f} TB")
        print(f"assumptions: per-image cost as measured here on this set's image sizes (ImageNet's mean is about "
              f"400x350 px and 110 kB, so scale by the size ratio); {args.efficiency:.0%} parallel efficiency on {args.cores} cores; "
              f"{args.disk_mb_s:.0f} MB/s sustained writes (FFCV bytes are written twice: staging, then .beton); "
              f"serial bound = the 1-worker run's time beyond decode+encode and .beton assembly (main-process writing "
              f"and checksums), unchanged on the big machine; the .beton assembly is single-process and follows "
              f"the parallel pass.")
        if args.json:
            write_json_atomic({"source": stats, "policy": POLICY.as_dict(), "shard_size": args.shard_size,
                               "cpu_count": os.cpu_count(), "runs": rows,
                               "single_process_ms_per_image": per_image_cpu * 1e3,
                               "projection": {"cores": args.cores, "efficiency": args.efficiency,
                                              "disk_mb_s": args.disk_mb_s, **proj}}, args.json, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
