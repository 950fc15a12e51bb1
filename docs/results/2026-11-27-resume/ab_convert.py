#!/usr/bin/env python
"""A/B of conversion wall time: two neatt source trees, interleaved rounds, one source, one worker.

Usage (from the repository root; OLD is e.g. `git archive 7a347a5 neatt tools | tar -x -C /tmp/old`):
    python docs/results/2026-11-27-resume/ab_convert.py OLD_TREE NEW_TREE --shard-size 100 --rounds 5

The source is bench_convert.py's photo tree (400 JPEGs, ImageNet policy). Each round runs each tree in a fresh
process that converts twice (the first run compiles FFCV's numba code) and reports the second run's wall time.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

RUN = """
import os, shutil, sys, time
sys.path.insert(0, sys.argv[1])
from neatt.datasets.convert import ConvertOptions, convert
from neatt.datasets.images import ImagePolicy
from neatt.datasets.sources import folder_source
policy = ImagePolicy(max_resolution=500, jpeg_quality=90, write_mode="proportion", compress_probability=0.5)
src = folder_source(sys.argv[2], splits=("train",))
for _ in range(2):
    shutil.rmtree(sys.argv[3], ignore_errors=True)
    t = time.perf_counter()
    convert(src, sys.argv[3], ConvertOptions(policy=policy, workers=1, shard_size=int(sys.argv[4]), progress=False),
            log=open(os.devnull, "w"))
print(time.perf_counter() - t)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=400)
    args = p.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.path.insert(0, os.path.join(root, "tools"))
    sys.path.insert(0, root)
    import bench_convert
    with tempfile.TemporaryDirectory() as tmp:
        bench_convert.build_source(os.path.join(tmp, "src"), args.images)
        walls = {"old": [], "new": []}
        for _ in range(args.rounds):
            for name in walls:
                out = subprocess.run([sys.executable, "-c", RUN, os.path.abspath(getattr(args, name)),
                                      os.path.join(tmp, "src"), os.path.join(tmp, f"out-{name}"),
                                      str(args.shard_size)], capture_output=True, text=True, check=True)
                walls[name].append(float(out.stdout.split()[-1]))
                print(name, f"{walls[name][-1]:.3f} s", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(json.dumps({"shard_size": args.shard_size, "images": args.images, "walls_s": walls, "median_s": med,
                      "new_over_old": med["new"] / med["old"]}))


if __name__ == "__main__":
    main()
