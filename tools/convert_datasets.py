#!/usr/bin/env python
"""Convert a dataset once into the FFCV and DALI files that neatt trains from.

Usage:
    python tools/convert_datasets.py digits --out data                     # embedded demo, no download
    python tools/convert_datasets.py cifar100 --src ~/cifar-100-python.tar.gz --out /data/neatt
    python tools/convert_datasets.py cifar10 --src ~/cifar-10-python.tar.gz --out /data/neatt
    python tools/convert_datasets.py imagenet --src /data/ILSVRC2012 --out /data/neatt --workers 32
    python tools/convert_datasets.py folder --src /data/flowers --out /data/neatt --name flowers
    python tools/convert_datasets.py imagenet --out /data/neatt --verify    # files vs the manifest's sha256

Writes <out>/<name>/ (--name, default the source kind): train.beton, val.beton, dali/<split>-NNNNN.{tar,idx},
manifest.json (docs/architecture.md, section 1). Rerunning skips what is complete and continues an interrupted
split from its last checkpoint (saved every --shard-size images).
Exit codes: 0 done, 1 conversion error (--strict skips, conflicting existing output, a failed write), 2 bad
arguments or source, 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neatt.datasets import sources  # noqa: E402
from neatt.datasets.convert import FORMATS, ConvertError, ConvertOptions, convert  # noqa: E402
from neatt.datasets.images import WRITE_MODES, ImagePolicy  # noqa: E402
from neatt.datasets.manifest import ManifestError, entry_files, file_problems, read_manifest  # noqa: E402

# Per-dataset storage defaults. ImageNet follows ffcv-imagenet's train_500_0.50_90 files (max side 500, half the
# images JPEG at quality 90, half raw: faster decoding for more disk, about 0.35 TB for the train set); the 32 px
# datasets are stored as quality-95 JPEG so that FFCV and DALI hold the same pixels and differ little from the source.
DEFAULTS = {
    "imagenet": dict(max_resolution=500, jpeg_quality=90, write_mode="proportion", compress_probability=0.5),
    "cifar10": dict(max_resolution=32, jpeg_quality=95, write_mode="jpg", compress_probability=1.0),
    "cifar100": dict(max_resolution=32, jpeg_quality=95, write_mode="jpg", compress_probability=1.0),
    "digits": dict(max_resolution=32, jpeg_quality=95, write_mode="jpg", compress_probability=1.0),
    "folder": dict(max_resolution=512, jpeg_quality=90, write_mode="jpg", compress_probability=1.0),
}

EPILOG = """per-dataset defaults (max-resolution / jpeg-quality / write-mode / compress-probability):
  imagenet  500 / 90 / proportion / 0.5   (ffcv-imagenet's train_500_0.50_90; ~0.35 TB FFCV train set)
  cifar10    32 / 95 / jpg / 1.0
  cifar100   32 / 95 / jpg / 1.0
  digits     32 / 95 / jpg / 1.0          (scikit-learn digits, 32x32 RGB, stratified 80/20 split, seed 0)
  folder    512 / 90 / jpg / 1.0
DALI shards always hold JPEG at --jpeg-quality; --write-mode only concerns FFCV.

image handling: formats are detected from content (a PNG named .JPEG converts fine); grayscale, CMYK, palette and
1-bit images become RGB; 16-bit images are scaled to 8 bits; alpha is composited over white; EXIF orientation is
ignored (as torchvision/timm do); images larger than --max-resolution are shrunk (aspect kept, INTER_AREA).
Truncated, empty, unreadable and non-image files are skipped and listed (stderr and manifest.json "skipped");
with --strict any skip is an error.

ImageNet's downloaded tars: their index (minutes of header reads for the train tar) is cached under
$NEATT_CACHE_DIR (default ~/.cache/neatt; empty: no cache), keyed by the archive's path, size and time.

layout: see docs/architecture.md; class indices are the sorted class folder names (ImageNet: sorted wnids)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sources.DATASETS, help="source kind")
    p.add_argument("--src", help="source path (not for digits): ImageNet root (extracted, or the folder holding "
                                 "image-net.org's ILSVRC2012_img_{train,val}.tar and devkit), CIFAR-10/100 tar.gz or "
                                 "folder, ImageFolder root")
    p.add_argument("--out", required=True, help="output root; the dataset goes to <out>/<name>/")
    p.add_argument("--name", help="the dataset's folder under --out, also its name in manifest.json (default: the "
                                  "source kind, e.g. imagenet); e.g. two folder datasets, or ImageNet stored at "
                                  "two --max-resolution values, side by side")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of %(default)s")
    p.add_argument("--splits", default="train,val", help="comma list of split folders/names (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    g = p.add_argument_group("image storage (defaults depend on the dataset, see below)")
    g.add_argument("--max-resolution", type=int, help="longer side limit in pixels")
    g.add_argument("--jpeg-quality", type=int, help="JPEG quality 1-100")
    g.add_argument("--write-mode", choices=WRITE_MODES, help="FFCV storage: jpg, raw, proportion, smart")
    g.add_argument("--compress-probability", type=float, help="share of JPEG records with --write-mode proportion")
    g.add_argument("--smart-threshold", type=int, help="raw bytes above which --write-mode smart compresses")
    g.add_argument("--shard-size", type=int, default=5000,
                   help="samples per DALI shard and between the checkpoints a rerun resumes from (default %(default)s)")
    g = p.add_argument_group("ImageNet flat val labels (found automatically under --src when present)")
    g.add_argument("--val-labels", help="LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    g.add_argument("--devkit", help="ILSVRC2012_devkit_t12 folder, its data/meta.mat or its .tar.gz (class order "
                                    "for the txt)")
    g.add_argument("--wnid-order", help="text file with the 1000 wnids in devkit (ILSVRC2012_ID) order")
    g = p.add_argument_group("behaviour")
    g.add_argument("--force", action="store_true", help="redo outputs that are already complete")
    g.add_argument("--strict", action="store_true", help="fail if any input has to be skipped")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--verify", action="store_true",
                   help="convert nothing: check <out>/<name>/'s files against the sizes and sha256 sums in its "
                        "manifest (e.g. after copying it to another node; reads every file)")
    args = p.parse_args(argv)
    if args.dataset == "digits" and args.src:
        p.error("digits is embedded: drop --src")
    if args.dataset != "digits" and not args.src and not args.verify:
        p.error(f"{args.dataset} needs --src (see the layouts in --help)")
    args.name = args.name or args.dataset
    if args.name in (".", "..") or not args.name.strip() or any(c in args.name for c in "/\\"):
        p.error(f"--name {args.name!r}: a folder name under --out, without / or \\")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    if args.shard_size < 1:
        p.error(f"--shard-size must be >= 1, got {args.shard_size}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out} is a file; pass a folder (the dataset goes to <out>/{args.name}/)")
    args.formats = tuple(f for f in args.formats.split(",") if f)
    args.splits = tuple(s for s in args.splits.split(",") if s)
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats:
        p.error(f"--formats: unknown {bad}; choose from {', '.join(FORMATS)}")
    if args.dataset != "folder" and not set(args.splits) <= {"train", "val"}:
        p.error(f"--splits: {args.dataset} has train and val only")
    d = DEFAULTS[args.dataset]
    try:
        args.policy = ImagePolicy(
            max_resolution=d["max_resolution"] if args.max_resolution is None else args.max_resolution,
            jpeg_quality=d["jpeg_quality"] if args.jpeg_quality is None else args.jpeg_quality,
            write_mode=args.write_mode or d["write_mode"],
            compress_probability=d["compress_probability"] if args.compress_probability is None
            else args.compress_probability,
            smart_threshold=args.smart_threshold)
    except ValueError as e:
        p.error(str(e))
    return args


def load_source(args) -> sources.DatasetSource:
    if args.dataset == "imagenet":
        src = sources.imagenet_source(args.src, args.splits, args.val_labels, args.devkit, args.wnid_order)
    elif args.dataset in sources.CIFAR_RELEASES:
        src = sources.cifar_source(args.dataset, args.src, args.splits)
    elif args.dataset == "folder":
        src = sources.folder_source(args.src, args.splits)
    else:
        src = sources.digits_source(args.splits)
    return dataclasses.replace(src, name=args.name)


def print_summary(result: dict, wall: float) -> None:
    m, err = result["manifest"], sys.stderr
    print(f"\n{m['dataset']} -> {result['out_dir']}  ({wall:.1f} s)", file=err)
    for split, t in result["timings"].items():
        s = t["seconds"]
        rate = t["decoded"] / s["prepare"] if s["prepare"] > 0 else float("nan")
        resumed = f" (resumed: {t['decoded']} decoded now)" if t["decoded"] < t["candidates"] else ""
        extra = "".join(f", {k} {v:.1f} s" for k, v in s.items() if k != "prepare")
        print(f"  {split}: {t['count']} images written, {t['skipped']} skipped; formats {','.join(t['formats'])}; "
              f"decode+encode {rate:.0f} img/s ({s['prepare']:.1f} s){resumed}{extra}", file=err)
    for fmt, per_split in m["formats"].items():
        for split, e in per_split.items():
            size = e["bytes"] if fmt == "ffcv" else sum(sh["bytes"] for sh in e["shards"])
            n = 1 if fmt == "ffcv" else len(e["shards"])
            print(f"  {fmt}/{split}: {n} file(s), {size / 2**20:.1f} MiB", file=err)
    for split, info in m["splits"].items():  # e.g. an empty class folder, or one whose every image was skipped
        empty = [c for c, n in zip(m["classes"], info["label_counts"]) if n == 0]
        if empty:
            print(f"  warning: {split} has no image of {len(empty)} class(es): {', '.join(empty[:20])}"
                  f"{', ...' if len(empty) > 20 else ''}; check the source if that is not meant", file=err)
    if m["skipped"]:
        print(f"  skipped {len(m['skipped'])} input(s) (all listed in manifest.json):", file=err)
        for s in m["skipped"][:50]:
            print(f"    {s['split']}: {s['path']}: {s['reason']}", file=err)
        if len(m["skipped"]) > 50:
            print(f"    ... and {len(m['skipped']) - 50} more", file=err)


def verify(data_dir: str) -> int:
    """Check every file the manifest of ``data_dir`` lists; 0 if all match, 1 (problems listed) if not."""
    try:
        m = read_manifest(data_dir)
    except ManifestError as e:
        print(f"convert_datasets.py --verify: {e}", file=sys.stderr)
        return 1
    problems, n = [], 0
    for fmt, per_split in m["formats"].items():
        for split, entry in per_split.items():
            n += len(entry_files(entry))
            problems += [f"{fmt}/{split}: {p}" for p in file_problems(data_dir, entry, hashes=True)]
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{data_dir}: {n} files checked, {len(problems) or 'no'} problem(s)"
          + ("; copy them again or re-convert (--force)" if problems else ""), file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verify:
        return verify(os.path.join(args.out, args.name))
    t0 = time.perf_counter()
    try:
        src = load_source(args)
        opts = ConvertOptions(policy=args.policy, formats=args.formats, workers=args.workers,
                              shard_size=args.shard_size, force=args.force, strict=args.strict,
                              progress=not args.no_progress)
        result = convert(src, args.out, opts)
    except sources.SourceError as e:
        print(f"convert_datasets.py {args.dataset}: {e}", file=sys.stderr)
        return 2
    except ConvertError as e:
        print(f"convert_datasets.py {args.dataset}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, read-only output, I/O error: not a bug to show as a traceback
        print(f"convert_datasets.py {args.dataset}: {e}\nNothing incomplete is listed in manifest.json; fix this "
              f"and rerun the same command to go on from the last checkpoint", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing incomplete is listed in manifest.json; rerun the same command (without "
              "--force) to go on from the last checkpoint (every --shard-size images)", file=sys.stderr)
        return 130
    print_summary(result, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
