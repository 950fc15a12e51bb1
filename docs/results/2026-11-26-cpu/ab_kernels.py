"""A/B of pipelines/augment/cpu_kernels.py against an older copy, in one process, rounds interleaved (2026-11-26
late evening): the bicubic warps alone (ms per 224 px photo, 64 photos, best of 7) and the whole DeviceAugment
call (--aa v0, erasing 0.5 'pixel', 256 photos in batches of 64, best of 8), one thread; outputs compared.

    git show f3ebf51~1:pipelines/augment/cpu_kernels.py | sed "s/^from \.stream_store/from pipelines.augment.stream_store/" > /tmp/ck_old.py
    .venv/bin/python docs/results/2026-11-26-cpu/ab_kernels.py /tmp/ck_old.py

(The copy is imported by its file name, from its folder: numba's cache needs an importable module.)
"""
import importlib
import os
import sys
import time

sys.path.insert(0, '.'); sys.path.insert(0, 'tools')  # run from the repo root
import neatt  # noqa: F401
import numpy as np
import torch
from neatt.runtime import configure_cpu_allocator
from pipelines.augment import AugmentConfig, DeviceAugment, device_augment, ops
from pipelines.augment import cpu_kernels as new
from bench_augment import sample_photos

configure_cpu_allocator()
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
old = importlib.import_module(os.path.splitext(os.path.basename(sys.argv[1]))[0])
photos = sample_photos(256, 224)
fill = np.array([128, 128, 128], np.uint8)
x, d_new, d_old = photos[:64], np.empty_like(photos[:64]), np.empty_like(photos[:64])
for name, arg in (('Rotate', 24.0), ('ShearY', 0.12), ('ShearX', 0.12), ('TranslateYRel', 0.3)):
    m = ops.affine_matrix(name, torch.full((1,), arg, dtype=torch.float64), 224, 224)[0].reshape(6).numpy()

    def warp(module, dst):
        t = time.perf_counter()
        for b in range(len(x)):
            module._warp(x[b], dst[b], m, fill, True, False)
        return (time.perf_counter() - t) / len(x) * 1e3

    warp(new, d_new), warp(old, d_old)
    t_new, t_old = zip(*((warp(new, d_new), warp(old, d_old)) for _ in range(7)))
    print(f'{name:14s} new {min(t_new):.3f}  old {min(t_old):.3f} ms/img  differing values: {int((d_new != d_old).sum())}')

batches = torch.from_numpy(photos).permute(0, 3, 1, 2).split(64)
aug = DeviceAugment(AugmentConfig(aa='v0', reprob=0.5, remode='pixel', hflip=0.5, img_size=224))
gen = torch.Generator()


def augment_round(module):
    device_augment.cpu_kernels = module
    gen.manual_seed(0)
    t = time.perf_counter()
    outs = [aug(b, gen) for b in batches]
    return time.perf_counter() - t, outs


(_, o_new), (_, o_old) = augment_round(new), augment_round(old)
print('DeviceAugment outputs equal:', all(torch.equal(a, b) for a, b in zip(o_new, o_old)))
rounds = [(augment_round(new)[0], augment_round(old)[0]) for _ in range(8)]
t_new, t_old = zip(*rounds)
print(f'DeviceAugment v0: new {256 / min(t_new):.0f}  old {256 / min(t_old):.0f} img/s, best-round speed-up '
      f'{min(t_old) / min(t_new):.3f}, median of paired rounds {sorted(o / n for n, o in rounds)[4]:.3f}')
