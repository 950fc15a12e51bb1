"""Where the CPU augmentation kernel spends a v0 batch (2026-11-26 late evening): the kernel run on 256 photos
with the ops of the real v0 draws, keeping one kind of op at a time (the others set to NONE), ms per image above
flip + normalization alone, best of 5, one thread.

    .venv/bin/python docs/results/2026-11-26-cpu/v0_split.py
"""
import sys, time
sys.path.insert(0, '.'); sys.path.insert(0, 'tools')  # run from the repo root
import neatt, torch, numpy as np
from neatt.runtime import configure_cpu_allocator
configure_cpu_allocator()
torch.set_num_threads(1)
from pipelines.augment import AugmentConfig, DeviceAugment, cpu_kernels as ck
from bench_augment import sample_photos
B = 256
x = torch.from_numpy(sample_photos(B, 224)).permute(0, 3, 1, 2)
aug = DeviceAugment(AugmentConfig(aa='v0', reprob=0.5, remode='pixel', hflip=0.5, img_size=224))
gen = torch.Generator().manual_seed(0)
flip = torch.rand(B, generator=gen) < 0.5
plan = aug._draw_ops(B, 224, 224, gen)
code = torch.where(plan.key >= 0, aug._kernel_code[plan.key.clamp(min=0)], ck.NONE)
out = torch.empty(x.shape, memory_format=torch.channels_last)
names = {v: k for k, v in ck.OP_CODES.items()}; names[ck.WARP_BICUBIC] = 'warp'; names[ck.WARP_BILINEAR] = 'warp_bl'
mats = plan.mats.reshape(B, -1, 6)
is2d = ~((mats[..., 3] == 0) & (mats[..., 4] == 1) & (mats[..., 5] == 0)) & ~((mats[..., 0] == 1) & (mats[..., 1] == 0) & (mats[..., 2] == 0))
groups = {'none': torch.zeros_like(code, dtype=torch.bool)}
for c in code.unique().tolist():
    if c == ck.NONE: continue
    sel = code == c
    if c == ck.WARP_BICUBIC:
        groups['warp2d'] = sel & is2d; groups['warp1d'] = sel & ~is2d
    else:
        groups[names[c]] = sel
def run(mask):
    ck.augment(x, flip, torch.where(mask, code, ck.NONE), plan.arg, plan.mats, (128,) * 3, aug._scale, aug._shift, out)
for m in groups.values(): run(m)
run(code != ck.NONE)
res = {k: [] for k in list(groups) + ['all']}
for r in range(5):
    for k, m in list(groups.items()) + [('all', code != ck.NONE)]:
        t = time.perf_counter(); run(m); res[k].append(time.perf_counter() - t)
base = min(res['none'])
for k, v in res.items():
    n = int(groups[k].sum()) if k in groups else int((code != ck.NONE).sum())
    print(f'{k:14s} count {n:4d}  +{(min(v) - base) / B * 1e3:.4f} ms/img   (total {min(v) / B * 1e3:.4f})')
