"""DeviceAugment on 2 threads (--aa v0, erasing 0.5 'pixel', batches of 64), with and without numba's
dynamic scheduling (2026-11-26 late night): `parallel_chunksize(1)` around the kernel launches, or numba's default
even split of each batch, rounds interleaved, 10 each.

    .venv/bin/python docs/results/2026-11-26-cpu-late-night/ab_chunks_2threads.py
"""
import contextlib
import sys
import time

sys.path.insert(0, '.'); sys.path.insert(0, 'tools')  # run from the repo root
import neatt  # noqa: F401
import torch
from neatt.runtime import configure_cpu_allocator
from pipelines.augment import AugmentConfig, DeviceAugment, cpu_kernels, erasing
from bench_augment import sample_photos

configure_cpu_allocator()
torch.set_num_threads(2)
batches = torch.from_numpy(sample_photos(256, 224)).permute(0, 3, 1, 2).split(64)
aug = DeviceAugment(AugmentConfig(aa='v0', reprob=0.5, remode='pixel', hflip=0.5, img_size=224))
gen = torch.Generator()
dynamic = cpu_kernels.parallel_chunksize


def one_round(use_dynamic: bool) -> float:
    chunks = dynamic if use_dynamic else (lambda n: contextlib.nullcontext())
    cpu_kernels.parallel_chunksize = erasing.parallel_chunksize = chunks
    gen.manual_seed(0)
    t0 = time.perf_counter()
    for b in batches:
        aug(b, gen)
    return 256 / (time.perf_counter() - t0)


one_round(False), one_round(True)
ips = {False: [], True: []}
for _ in range(10):
    for d in (False, True):
        ips[d].append(one_round(d))
for d, v in ips.items():
    print(f"{'dynamic' if d else 'static '} best {max(v):.0f} median {sorted(v)[5]:.0f} img/s")
