"""The torchvision baseline with a new DataLoader (and new worker processes) per epoch, against one DataLoader whose
workers persist (2026-11-27), in one process, epochs interleaved: uint8 train epochs of the bench photos, batch 64,
224 px, 2 workers; images/s per epoch, first batch's wait included.

    git show 47e66ac:pipelines/torch_loader.py | sed -e "s/^from \\.base import/from pipelines.base import/" \\
        -e "s/^from \\.crop import/from pipelines.crop import/" \\
        -e "s/^from \\.shard_reader import/from pipelines.shard_reader import/" > /tmp/old/torch_loader_old.py
    .venv/bin/python docs/results/2026-11-27-cpu/ab_torch_workers.py /tmp/old/torch_loader_old.py [dataset dir]
"""
import os, sys, time
sys.path.insert(0, '.')  # run from the repo root
import neatt  # noqa: F401  (its OpenMP and numba threading settings first, as in the trainer)
from pipelines import base
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
base.BACKENDS['torch_old'] = (os.path.splitext(os.path.basename(sys.argv[1]))[0], 'TorchLoader', 'dali', 'torchvision')
data = sys.argv[2] if len(sys.argv) > 2 else '/tmp/bench/photos/out/folder'
L = {name: base.build_loader(data, split='train', backend=name, batch_size=64, image_size=224, seed=0,
                             device='cpu', num_workers=2) for name in ('torch_old', 'torch')}
ips, first = {k: [] for k in L}, {k: [] for k in L}
for r in range(8):
    for name, loader in (L.items() if r % 2 else reversed(L.items())):
        t0 = time.perf_counter(); n = 0
        for im, _ in loader._iter_uint8(r, 0):
            if n == 0:
                first[name].append(time.perf_counter() - t0)
            n += im.shape[0]
        ips[name].append(n / (time.perf_counter() - t0))
for k in L:
    v = sorted(ips[k])
    print(f'{k:9s} best {v[-1]:.0f} median {v[len(v) // 2]:.0f} img/s; first batch after {sorted(first[k])[len(v) // 2]:.2f} s (median)')
r = sorted(b / a for a, b in zip(ips['torch_old'], ips['torch']))
print(f'persistent / per-epoch workers: best {max(ips["torch"]) / max(ips["torch_old"]):.3f}, median of paired epochs {r[len(r) // 2]:.3f}')
