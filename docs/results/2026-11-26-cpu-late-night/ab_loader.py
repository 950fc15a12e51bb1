"""A/B of pipelines/ffcv_loader.py against an older copy, in one process, epochs interleaved (2026-11-26 late night):
uint8 train epochs (decode + crop + resize + flip) of the same dataset, batch 64, 2 threads; batches compared.

    git show b9a9998~1:pipelines/ffcv_loader.py | sed -e "s/^from \.base import/from pipelines.base import/" \
        -e "s/^from \.crop import/from pipelines.crop import/" > /tmp/old/ffcv_loader_old.py
    .venv/bin/python docs/results/2026-11-26-cpu-late-night/ab_loader.py /tmp/old/ffcv_loader_old.py [dataset dir]

The dataset dir defaults to the 1,800 photos of `tools/bench_loader.py --make-photos 2000 --data /tmp/bench/photos`.
"""
import os, sys, time
sys.path.insert(0, '.')  # run from the repo root
import neatt  # noqa: F401  (its OpenMP setting first, as in the trainer)
import torch
from pipelines import base
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
old_name = os.path.splitext(os.path.basename(sys.argv[1]))[0]
base.BACKENDS['ffcv_old'] = (old_name, 'FfcvLoader', 'ffcv', 'ffcv')
data = sys.argv[2] if len(sys.argv) > 2 else '/tmp/bench/photos/out/folder'
L = {name: base.build_loader(data, split='train', backend=name, batch_size=64, image_size=224, seed=0,
                             device='cpu', num_workers=2) for name in ('ffcv_old', 'ffcv')}
same = all(torch.equal(a[0], b[0]) for a, b in zip(L['ffcv_old']._iter_uint8(0, 0), L['ffcv']._iter_uint8(0, 0)))
print('batches equal:', same)
ips = {k: [] for k in L}
for r in range(1, 13):
    for name, loader in (L.items() if r % 2 else reversed(L.items())):
        torch.set_num_threads(2)
        t0 = time.perf_counter(); n = 0
        for im, _ in loader._iter_uint8(r, 0): n += im.shape[0]
        ips[name].append(n / (time.perf_counter() - t0))
ratio = sorted(b / a for a, b in zip(ips['ffcv_old'], ips['ffcv']))
for k, v in ips.items(): print(f'{k:9s} best {max(v):.0f} median {sorted(v)[len(v) // 2]:.0f} img/s')
best = max(ips['ffcv']) / max(ips['ffcv_old'])
print(f'new/old: best {best:.3f}, median of paired epochs {ratio[len(ratio) // 2]:.3f}')
