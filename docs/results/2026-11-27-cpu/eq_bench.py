"""FFCV vs torchvision uint8 batches on the bench photos (1,800 photos ~400x350, 224 px): equal?"""
import sys, torch
sys.path.insert(0, '.')
import neatt  # noqa: F401  (its OpenMP and numba threading settings first, as in the trainer)
from pipelines.base import build_loader
d = '/tmp/bench/photos/out/folder'
for split in ('train', 'val'):
    L = {b: build_loader(d, split=split, backend=b, batch_size=64, image_size=224, seed=0, device='cpu', num_workers=2,
                         train=split == 'train') for b in ('ffcv', 'torch')}
    n = neq = 0; mx = 0
    for (a, ya), (b, yb) in zip(L['ffcv']._iter_uint8(1, 0), L['torch']._iter_uint8(1, 0)):
        assert torch.equal(ya, yb)
        for i in range(len(a)):
            n += 1; e = torch.equal(a[i], b[i]); neq += not e
            if not e: mx = max(mx, (a[i].int() - b[i].int()).abs().max().item())
    print(split, 'images', n, 'differing', neq, 'max diff', mx)
