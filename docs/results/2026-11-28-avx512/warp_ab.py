"""Paired timing of `_warp_bicubic` in two versions of pipelines/augment/cpu_kernels.py, loaded side by side, one
thread, thread CPU time, 31 alternating rounds (2026-11-28): a 17-degree rotation of a 224-pixel photo, or with a
third argument a shear along x. Prints whether both give the same pixels, and the median of the paired ratios B/A.

    .venv/bin/python docs/results/2026-11-28-avx512/warp_ab.py A.py B.py [shear]
"""
import importlib.util, sys, time, math
import neatt  # noqa: F401
import numpy as np, torch
torch.set_num_threads(1)
def load(path, name):
    spec = importlib.util.spec_from_file_location('pipelines.augment.' + name, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod
a, b = load(sys.argv[1], 'ck_a'), load(sys.argv[2], 'ck_b')
rng = np.random.default_rng(0)
from skimage import data
src = np.ascontiguousarray(data.astronaut()[::2, ::2][:224, :224])
ang = math.radians(17.0)
c, s = math.cos(ang), math.sin(ang)
cx = cy = 112.0
m = np.array([c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy])
fill = np.array([128, 128, 128], np.uint8)
da, db = np.empty_like(src), np.empty_like(src)
AX = len(sys.argv) > 3
if AX:
    m = np.array([1.0, 0.3, -30.0, 0.0, 1.0, 0.0])
a._warp_bicubic(src, da, m, fill, AX, False, False); b._warp_bicubic(src, db, m, fill, AX, False, False)
print('equal outputs:', np.array_equal(da, db))
ta, tb = [], []
for _ in range(31):
    t = time.thread_time(); a._warp_bicubic(src, da, m, fill, AX, False, False); ta.append(time.thread_time() - t)
    t = time.thread_time(); b._warp_bicubic(src, db, m, fill, AX, False, False); tb.append(time.thread_time() - t)
r = sorted(q / p for p, q in zip(ta, tb))
print('A %.3f ms  B %.3f ms (medians)  B/A paired median %.3f [%.3f..%.3f]' % (
    1e3 * np.median(ta), 1e3 * np.median(tb), r[15], r[7], r[23]))
