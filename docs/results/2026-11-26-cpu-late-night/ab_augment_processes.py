"""DeviceAugment (--aa v0, erasing 0.5 'pixel', 256 photos in batches of 64, 1 thread): best of 4 rounds, img/s,
for the repository at argv[1] (2026-11-26 late night). The changes it measured also touched device_augment.py and
erasing.py, so instead of swapping one module it runs whole checkouts, one process each, alternating:

    git worktree add /tmp/old <old commit>
    for i in 1 2 3 4; do
      echo old $(.venv/bin/python docs/results/2026-11-26-cpu-late-night/ab_augment_processes.py /tmp/old) \
           new $(.venv/bin/python docs/results/2026-11-26-cpu-late-night/ab_augment_processes.py $PWD)
    done

Each process first runs one untimed round (numba's cache load or compilation) and saves the first batch's first
4 images to /tmp/ab_augment_<name of the checkout>.pt, so that the outputs can be compared.
"""
import os
import sys
import time

repo = os.path.abspath(sys.argv[1])
sys.path.insert(0, repo)
sys.path.insert(0, os.path.join(repo, 'tools'))
import neatt  # noqa: E402,F401
import torch  # noqa: E402
from neatt.runtime import configure_cpu_allocator  # noqa: E402

configure_cpu_allocator()
torch.set_num_threads(1)
import pipelines  # noqa: E402

assert pipelines.__file__.startswith(repo), pipelines.__file__
from pipelines.augment import AugmentConfig, DeviceAugment  # noqa: E402
from bench_augment import sample_photos  # noqa: E402

batches = torch.from_numpy(sample_photos(256, 224)).permute(0, 3, 1, 2).split(64)
aug = DeviceAugment(AugmentConfig(aa='v0', reprob=0.5, remode='pixel', hflip=0.5, img_size=224))
gen = torch.Generator()


def one_round():
    gen.manual_seed(0)
    t0 = time.perf_counter()
    outs = [aug(b, gen) for b in batches]
    return 256 / (time.perf_counter() - t0), outs


_, outs = one_round()
torch.save(outs[0][:4].clone(), f'/tmp/ab_augment_{os.path.basename(repo)}.pt')
print(f'{max(one_round()[0] for _ in range(4)):.0f}')
