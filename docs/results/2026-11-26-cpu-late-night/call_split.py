"""Where one DeviceAugment call spends its time (2026-11-26 late night): --aa v0, erasing 0.5 'pixel', 256
photos in batches of 64, five passes, 1 thread; each part timed by wrapping it, ms per image and per batch.

    .venv/bin/python docs/results/2026-11-26-cpu-late-night/call_split.py
"""
import sys
import time

sys.path.insert(0, '.'); sys.path.insert(0, 'tools')  # run from the repo root
import neatt  # noqa: F401
import torch
from neatt.runtime import configure_cpu_allocator
from pipelines.augment import AugmentConfig, DeviceAugment, cpu_kernels
from bench_augment import sample_photos

configure_cpu_allocator()
torch.set_num_threads(1)
B, PASSES = 64, 5
batches = torch.from_numpy(sample_photos(256, 224)).permute(0, 3, 1, 2).split(B)
aug = DeviceAugment(AugmentConfig(aa='v0', reprob=0.5, remode='pixel', hflip=0.5, img_size=224))
spent = {}


def timed(owner, name, label):
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
        return result
    setattr(owner, name, wrapper)


timed(cpu_kernels, '_augment', 'kernel (compiled part)')
timed(cpu_kernels, 'augment', 'kernel (with its Python wrapper)')
timed(aug, '_draw_ops', 'op draw')
timed(aug.erasing, 'sample', 'box draw')
timed(aug.erasing, 'noise_boxes', 'noise plan')
gen = torch.Generator()
for _ in range(2):  # the first pass warms up
    spent.clear()
    gen.manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(PASSES):
        for b in batches:
            aug(b, gen)
    total = time.perf_counter() - t0
n = PASSES * 256
print(f'whole call: {1e3 * total / n:.4f} ms per image')
for label, s in spent.items():
    print(f'{label:34s} {1e3 * s / n:.4f} ms per image, {1e3 * s / (n / B):.3f} ms per batch')
