"""resample_bicubic before and after Pillow's pass order (2026-11-27), same photos and train windows, rounds
interleaved, split by the order Pillow 13 picks (vertical first when the height shrinks by more than twice the
width's pixels).

    git show f66cdca:pipelines/ffcv_loader.py | sed -e "s/^from \.base import/from pipelines.base import/" \
        -e "s/^from \.crop import/from pipelines.crop import/" \
        -e "s/^from \.augment\.cpu_kernels import/from pipelines.augment.cpu_kernels import/" > /tmp/old/ffcv_loader_old.py
    .venv/bin/python docs/results/2026-11-27-cpu/ab_resample.py /tmp/old/ffcv_loader_old.py
"""
import glob, os, sys, time
sys.path.insert(0, '.')  # run from the repo root
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
import importlib
import numpy as np
from PIL import Image
from pipelines import ffcv_loader as new
from pipelines.crop import rrc_windows

old = importlib.import_module(os.path.splitext(os.path.basename(sys.argv[1]))[0])
files = sorted(glob.glob('/tmp/bench/photos/src/train/**/*.jpg', recursive=True))[:300]
ims = [np.asarray(Image.open(f).convert('RGB')) for f in files]
H = np.array([i.shape[0] for i in ims]); W = np.array([i.shape[1] for i in ims])
win = rrc_windows(H, W, np.arange(len(ims)), seed=0, epoch=0)
vfirst = np.array([h - 224 > 0 and h - 224 > 2 * (w - 224) for _, _, h, w in win])
print(f'{vfirst.sum()} of {len(ims)} windows take the vertical pass first')
out = np.zeros((224, 224, 3), np.uint8)


def run(mod, sel):
    t = time.perf_counter()
    for k in np.flatnonzero(sel):
        y, x, h, w = win[k]
        mod.resample_bicubic(ims[k], y, x, h, w, 224, 224, 0, 0, 0, out)
    return (time.perf_counter() - t) / sel.sum() * 1e3


mods = (('old', old), ('new', new))
for _, m in mods:
    run(m, vfirst | True)
res = {}
for r in range(15):
    for name, m in (mods if r % 2 else mods[::-1]):
        for part, sel in (('vertical first', vfirst), ('horizontal first', ~vfirst)):
            res.setdefault((part, name), []).append(run(m, sel))
for (part, name), v in sorted(res.items()):
    print(f'{part:16s} {name}: min {min(v):.3f}  median {np.median(v):.3f} ms per image')
