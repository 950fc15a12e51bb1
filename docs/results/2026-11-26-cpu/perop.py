"""Per-op cost of the CPU augmentation kernel: ms per 224 px photo, batch 64, one thread, best of 5 (the lead, 2026-11-26 night).

    flock /tmp/neatt-bench.lock .venv/bin/python docs/results/2026-11-26-cpu/perop.py
"""
import sys, time
sys.path.insert(0, '.'); sys.path.insert(0, 'tools')  # run from the repo root
import neatt, torch, numpy as np
torch.set_num_threads(1)
from pipelines.augment import cpu_kernels as ck, ops
from bench_augment import sample_photos
B = 64
x = torch.from_numpy(sample_photos(B, 224)).permute(0, 3, 1, 2)
out = torch.empty(x.shape, memory_format=torch.channels_last)
one, zero = torch.ones(3), torch.zeros(3)
noflip = torch.zeros(B, dtype=torch.bool)
def run(code, arg, mats=None):
    c = torch.full((B, 1), code); a = torch.full((B, 1), float(arg), dtype=torch.float64)
    m = mats if mats is not None else torch.zeros(B, 1, 2, 3, dtype=torch.float64)
    ck.augment(x, noflip, c, a, m, (128, 128, 128), one, zero, out)
cases = {'normalize only': (ck.NONE, 0), 'Equalize': (ck.OP_CODES['Equalize'], 0), 'AutoContrast': (ck.OP_CODES['AutoContrast'], 0),
         'Solarize': (ck.OP_CODES['Solarize'], 128), 'Color': (ck.OP_CODES['Color'], 1.5), 'Posterize': (ck.OP_CODES['Posterize'], 4),
         'Invert': (ck.OP_CODES['Invert'], 0), 'SolarizeAdd': (ck.OP_CODES['SolarizeAdd'], 50), 'Sharpness': (ck.OP_CODES['Sharpness'], 1.5)}
rot = ops.affine_matrix('Rotate', torch.full((B,), 24.0, dtype=torch.float64), 224, 224).view(B, 1, 2, 3)
shy = ops.affine_matrix('ShearY', torch.full((B,), 0.12, dtype=torch.float64), 224, 224).view(B, 1, 2, 3)
for k, (c, a) in cases.items(): run(c, a)
run(ck.WARP_BICUBIC, 0, rot); run(ck.WARP_BICUBIC, 0, shy)
res = {}
for rep in range(5):
    for k, (c, a) in cases.items():
        t = time.perf_counter(); run(c, a); res.setdefault(k, []).append(time.perf_counter() - t)
    for k, m in (('Rotate 24', rot), ('ShearY .12', shy)):
        t = time.perf_counter(); run(ck.WARP_BICUBIC, 0, m); res.setdefault(k, []).append(time.perf_counter() - t)
base = min(res['normalize only']) / B * 1e3
for k, v in res.items():
    print(f'{k:<16} {min(v)/B*1e3:.3f} ms/img  (op alone ~{min(v)/B*1e3 - base:.3f})')
